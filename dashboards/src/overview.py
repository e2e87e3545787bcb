"""tcpstate-tracer / Overview: what TCP is doing on the chosen hosts and ports."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import Threshold

from .common import increase, new_dashboard, rate, sel, series, single

ON = "on (job, instance)"


def build() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "tcpstate-overview", "tcpstate-tracer / Overview",
            "Every TCP state transition the kernel made, by service port: the traffic, the "
            "sockets in each state, TIME_WAIT against the kernel's limits, and how connections "
            "fail and close.")
        .with_row(dashboard.Row("Now"))
        .with_panel(single(
            "Transitions per second",
            "All TCP state transitions on the chosen hosts and ports, counted in the kernel "
            "(exact even when events are lost on the way to the daemon). A connection that opens "
            "and closes on one host makes about ten.",
            "ops", f"sum({rate('tcpstate_transitions_total')})", span=6))
        .with_panel(single(
            "Established connections",
            "Sockets in ESTABLISHED now, both ends counted when both are on the host.",
            "short", f'sum({sel("tcpstate_sockets", state="ESTABLISHED")})', span=6))
        .with_panel(single(
            "TIME_WAIT sockets",
            "Sockets in TIME_WAIT now (modelled from the close and checked against the kernel's "
            "table: the tracepoint never reports TIME_WAIT).",
            "short", f'sum({sel("tcpstate_sockets", state="TIME_WAIT")})', span=6))
        .with_panel(single(
            "Stuck sockets",
            "Sockets now older in their state than its threshold: LAST_ACK and TIME_WAIT beyond "
            "2MSL, CLOSE_WAIT leaks, half-closed FIN_WAIT2. The Stuck sockets dashboard has them "
            "by port, with links to the timeline.",
            "short", f'sum({sel("tcpstate_stuck_sockets")})', span=6,
            thresholds=[Threshold(color="green"), Threshold(value=1, color="red")]))
        .with_row(dashboard.Row("Transitions and states"))
        .with_panel(series(
            "Transitions per second by port",
            "State transitions per second on each service port (a listener's own port, a "
            "client's remote port).",
            "ops", [(f"sum by (instance, port) ({rate('tcpstate_transitions_total')})",
                     "{{instance}} {{port}}")]))
        .with_panel(series(
            "Transitions per second by edge",
            "Transitions per second by from and to state, as the tracepoint reports them. An "
            "active close is FIN_WAIT2 -> CLOSE (TIME_WAIT follows in the kernel's mini-socket); "
            "FIN_WAIT1 -> FIN_WAIT1 is a close() after shutdown().",
            "ops", [(f"sum by (from_state, to_state) ({rate('tcpstate_transitions_total')})",
                     "{{from_state}} -> {{to_state}}")]))
        .with_panel(series(
            "Sockets by state",
            "Sockets in each state now, stacked; TIME_WAIT included (modelled). LISTEN is one per "
            "listener.",
            "short", [(f"sum by (state) ({sel('tcpstate_sockets')})", "{{state}}")], stack=True))
        .with_panel(series(
            "TIME_WAIT against its limits",
            "TIME_WAIT sockets as a share of the host's net.ipv4.tcp_max_tw_buckets (past it the "
            "kernel destroys new TIME_WAITs at once), and the TIME_WAIT of the busiest service "
            "port as a share of the ephemeral port range (clients toward one address and port "
            "run out of local ports: EADDRNOTAVAIL). The buckets limit is per network namespace "
            "and the count covers all of them, so it can read high on hosts with many.",
            "percentunit",
            [(f'sum by (job, instance) ({sel("tcpstate_sockets", state="TIME_WAIT")}) / {ON} '
              f'max by (job, instance) ({sel("tcpstate_kernel_limit", ports=False, name="tcp_max_tw_buckets")})',
              "{{instance}} of tcp_max_tw_buckets"),
             (f'max by (job, instance) ({sel("tcpstate_sockets", state="TIME_WAIT", port="!other")}) / {ON} '
              f'max by (job, instance) ({sel("tcpstate_kernel_limit", ports=False, name="ephemeral_ports")})',
              "{{instance}} busiest port of the ephemeral range")],
            thresholds=[Threshold(color="green"), Threshold(value=0.8, color="red")]))
        .with_row(dashboard.Row("Failures and closes"))
        .with_panel(series(
            "Connect failures by reason",
            "connect() calls that ended SYN_SENT -> CLOSE, per second: refused (a reset came "
            "back), no_local_port (EADDRNOTAVAIL: no free local port toward that destination), "
            "timeout (no answer, or the application gave up).",
            "ops", [(f"sum by (port, reason) ({rate('tcpstate_connect_failures_total')})",
                     "{{port}} {{reason}}")]))
        .with_panel(series(
            "Resets",
            "TCP resets sent and received per second, by service port (counted in the kernel).",
            "ops", [(f"sum by (port, direction) ({rate('tcpstate_resets_total')})",
                     "{{port}} {{direction}}")]))
        .with_panel(series(
            "Closes by who and how",
            "Connections closed per second, by who sent the first FIN (local, peer, simultaneous, "
            "none) and how this end finished: close, shutdown_wr / shutdown_rdwr (a half-close "
            "with shutdown()), reset_sent, reset_received, timeout. Each end on the host counts.",
            "ops", [(f"sum by (closer, how) ({rate('tcpstate_closes_total')})", "{{closer}} {{how}}")],
            stack=True))
        .with_panel(series(
            "Bind conflicts",
            "bind() calls refused with EADDRINUSE (\"address already in use\") per interval, by "
            "what held the port: listener, time_wait (set SO_REUSEADDR on both the old listener "
            "and the new socket), other, none (gone when the daemon looked). The last series "
            "counts refusals the program could not report (its ring buffer was full).",
            "short", [(f"sum by (port, holder) ({increase('tcpstate_bind_conflicts_total')})",
                       "{{port}} held by {{holder}}"),
                      (f"sum({increase('tcpstate_bind_conflicts_unexplained_total', ports=False)})",
                       "not reported")]))
        .with_panel(series(
            "Retransmissions by state",
            "Segments retransmitted per second by the socket's state. In LAST_ACK, FIN_WAIT1 and "
            "CLOSING they are FINs nobody acknowledges; in SYN_SENT and SYN_RECV, handshakes.",
            "ops", [(f"sum by (state) ({rate('tcpstate_retransmits_total')})", "{{state}}")],
            span=24))
    )
