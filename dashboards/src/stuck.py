"""tcpstate-tracer / Stuck sockets: which sockets linger, on which host and port, since
when, with a link from each to the timeline of that host's daemon."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import DashboardLinkType, Threshold, VariableOption

from .common import grid, increase, new_dashboard, rate, sel, series

WATCHED = "LAST_ACK|TIME_WAIT|CLOSE_WAIT|FIN_WAIT2|FIN_WAIT1|CLOSING|SYN_SENT|SYN_RECV"
# The daemon's timeline of one host, filtered to a port and state. The instance label is
# the daemon's address (host:port) in deploy/prometheus; $timeline_scheme is http unless
# the daemons serve TLS (--web.config.file).
TIMELINE = "${timeline_scheme}://%s/?port=%s&state=%s"
SERIES_LINK = TIMELINE % ("${__field.labels.instance}", "${__field.labels.port}", "${__field.labels.state}")
ROW_LINK = TIMELINE % ("${__data.fields.instance}", "${__data.fields.port}", "${__data.fields.state}")


def link(title: str, url: str) -> dashboard.DashboardLink:
    return dashboard.DashboardLink(title).type(DashboardLinkType.LINK).url(url).target_blank(True)


def build() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "tcpstate-stuck", "tcpstate-tracer / Stuck sockets",
            "Sockets older in their state than its threshold (LAST_ACK and TIME_WAIT beyond "
            "2MSL, CLOSE_WAIT leaks, orphaned FIN_WAIT2, unanswered handshakes and FINs), by "
            "host, port and state, each linked to that host's timeline.")
        .with_variable(
            dashboard.CustomVariable("timeline_scheme")
            .label("Timeline scheme")
            .description("How the links reach the daemons' timelines: https when they serve TLS "
                         "(--web.config.file)")
            .values("http,https")
            .current(VariableOption(selected=True, text="http", value="http")))
        .with_row(dashboard.Row("Now"))
        .with_panel(grid(
            "Stuck now, by host, port and state",
            "Each host, port and state with stuck sockets now, the oldest socket's age in that "
            "state, and the most stuck at once in the dashboard's time range (a leak grows). "
            "Click a port for the sockets on that host's timeline (the daemon's page at the "
            "instance's address), a state for the same filtered to it.",
            "short",
            [(f"sum by (instance, port, state) ({sel('tcpstate_stuck_sockets')}) > 0", "Stuck now"),
             (f"max by (instance, port, state) ({sel('tcpstate_oldest_socket_age_seconds', state='~' + WATCHED)})"
              f" and on (instance, port, state) (sum by (instance, port, state) ({sel('tcpstate_stuck_sockets')}) > 0)",
              "Oldest age"),
             (f"max by (instance, port, state) (max_over_time({sel('tcpstate_stuck_sockets')}[$__range]))"
              f" and on (instance, port, state) (sum by (instance, port, state) ({sel('tcpstate_stuck_sockets')}) > 0)",
              "Most in range")],
            links=[("port", "Timeline of this port on ${__data.fields.instance}", ROW_LINK),
                   ("state", "Timeline of this port and state", ROW_LINK)],
            units={"Oldest age": "s"}))
        .with_row(dashboard.Row("Over time"))
        .with_panel(series(
            "Stuck sockets by port and state",
            "Sockets older than their state's threshold, by host, port and state. Click a point "
            "for that host's timeline of the port and state.",
            "short",
            [(f"sum by (instance, port, state) ({sel('tcpstate_stuck_sockets')})",
              "{{instance}} {{port}} {{state}}")],
            links=[link("Timeline of ${__field.labels.port} ${__field.labels.state} on "
                        "${__field.labels.instance}", SERIES_LINK)]))
        .with_panel(series(
            "Oldest socket age by port and state",
            "Age in its current state of the oldest socket of each host, port and lingering "
            "state. The dashed line is 2MSL (60 s on Linux): a LAST_ACK or TIME_WAIT above it "
            "is stuck. An age known only since the daemon started is a lower bound.",
            "s",
            [(f"max by (instance, port, state) ({sel('tcpstate_oldest_socket_age_seconds', state='~' + WATCHED)})",
              "{{instance}} {{port}} {{state}}")],
            links=[link("Timeline of ${__field.labels.port} ${__field.labels.state} on "
                        "${__field.labels.instance}", SERIES_LINK)],
            thresholds=[Threshold(color="green"), Threshold(value=60, color="red")]))
        .with_panel(series(
            "Sockets crossing their threshold",
            "Sockets that became stuck per interval, by port and state: each counts once per "
            "state, including one that left the state between two scrapes (what the LAST_ACK "
            "and TIME_WAIT alerts fire on).",
            "short",
            [(f"sum by (port, state) ({increase('tcpstate_stuck_total')})", "{{port}} {{state}}")]))
        .with_panel(series(
            "Sockets in the lingering states",
            "All sockets now in the states that linger, stuck or not, by port: CLOSE_WAIT "
            "growing without bound is a leak (the peer closed, the application never did), "
            "FIN_WAIT2 waits on the peer's FIN, LAST_ACK on the final ACK, TIME_WAIT for 2MSL.",
            "short",
            [(f"sum by (port, state) ({sel('tcpstate_sockets', state='~CLOSE_WAIT|FIN_WAIT2|LAST_ACK|CLOSING|TIME_WAIT')})",
              "{{port}} {{state}}")]))
        .with_panel(series(
            "FINs nobody acknowledges",
            "Segments retransmitted per second in LAST_ACK, FIN_WAIT1 and CLOSING: FINs the peer "
            "never acknowledges, why a LAST_ACK outlives 2MSL (and re-arms the peer's TIME_WAIT).",
            "ops",
            [(f"sum by (port, state) ({rate('tcpstate_retransmits_total', state='~LAST_ACK|FIN_WAIT1|CLOSING')})",
              "{{port}} {{state}}")],
            span=24))
    )
