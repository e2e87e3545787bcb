"""tcpstate-tracer / Latency: how long sockets spend in each state, from the daemon's
histograms (tcpstate_state_duration_seconds, tcpstate_connection_duration_seconds)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from .common import histogram_heatmap, new_dashboard, rate, series

STATE_BUCKETS = "tcpstate_state_duration_seconds_bucket"


def buckets(state: str) -> str:
    return f"sum by (le) ({rate(STATE_BUCKETS, state=state)})"


def quantiles(state: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (port, le) ({rate(STATE_BUCKETS, state=state)}))",
             f"{{{{port}}}} p{round(q * 100)}") for q in (0.5, 0.99)]


# (state, title, what the time in it is)
CLOSING = [
    ("FIN_WAIT1", "FIN_WAIT1: our FIN until its ACK",
     "Time from this end's FIN (close() or shutdown()) to the peer's ACK of it; long when the "
     "peer is slow or gone and the FIN is retransmitted."),
    ("FIN_WAIT2", "FIN_WAIT2: until the peer's FIN",
     "Time from the ACK of our FIN to the peer's FIN: the half-closed wait. An orphaned socket "
     "leaves it for TIME_WAIT's mini-socket within microseconds; a shutdown() one waits on the "
     "peer."),
    ("CLOSE_WAIT", "CLOSE_WAIT: the application's close()",
     "Time from the peer's FIN to this end's close(): how long the application takes to close a "
     "connection the peer closed. A tail here is the start of a CLOSE_WAIT leak."),
    ("LAST_ACK", "LAST_ACK: until the final ACK",
     "Time from our FIN, sent after the peer's, to its ACK: about one round trip; longer when "
     "the final ACK is lost and the FIN is retransmitted."),
]


def build() -> dashboard.Dashboard:
    board = (
        new_dashboard(
            "tcpstate-latency", "tcpstate-tracer / Latency",
            "Time spent in each TCP state, observed as sockets leave it: the client's connect, "
            "the server's handshake, each closing state, and connection lifetimes. Heatmaps are "
            "the daemon's buckets (10 us to 10 min), not Grafana's.")
        .with_row(dashboard.Row("Handshake"))
        .with_panel(histogram_heatmap(
            "Connect latency (SYN_SENT)",
            "Client side: time from connect() to the SYN-ACK, for connections this host opened "
            "to the chosen service ports (SYN_SENT -> ESTABLISHED, and SYN_SENT -> CLOSE for "
            "failures). Cells: sockets per second that took that long.",
            buckets("SYN_SENT")))
        .with_panel(histogram_heatmap(
            "Handshake latency (SYN_RECV)",
            "Server side: time from the SYN to the handshake's last ACK, for connections accepted "
            "on the chosen ports. Cells: sockets per second that took that long.",
            buckets("SYN_RECV")))
        .with_panel(series(
            "Connect latency quantiles by port",
            "Median and 99th percentile of the client's connect time per service port, "
            "interpolated within the daemon's buckets.",
            "s", quantiles("SYN_SENT")))
        .with_panel(series(
            "Handshake latency quantiles by port",
            "Median and 99th percentile of the server's handshake time per service port, "
            "interpolated within the daemon's buckets.",
            "s", quantiles("SYN_RECV")))
        .with_row(dashboard.Row("Closing states"))
    )
    for state, title, description in CLOSING:
        board = board.with_panel(histogram_heatmap(
            title, f"{description} Cells: sockets per second that left {state} after that long.",
            buckets(state)))
    return (
        board
        .with_row(dashboard.Row("Connection lifetimes"))
        .with_panel(histogram_heatmap(
            "Connection lifetime, clients",
            "Lifetime of sockets that opened with connect() (the active side), from SYN_SENT to "
            "CLOSE; TIME_WAIT not included. Cells: connections per second that lived that long.",
            f'sum by (le) ({rate("tcpstate_connection_duration_seconds_bucket", role="active")})'))
        .with_panel(histogram_heatmap(
            "Connection lifetime, servers",
            "Lifetime of sockets accepted from a listener (the passive side), from SYN_RECV to "
            "CLOSE. Cells: connections per second that lived that long.",
            f'sum by (le) ({rate("tcpstate_connection_duration_seconds_bucket", role="passive")})'))
        .with_panel(series(
            "Mean time in each state",
            "Average time sockets on the chosen ports spent in each state they left in the "
            "interval (sum over count of the state histogram).",
            "s",
            [(f"sum by (state) ({rate('tcpstate_state_duration_seconds_sum')}) / "
              f"sum by (state) ({rate('tcpstate_state_duration_seconds_count')})", "{{state}}")],
            span=24))
    )
