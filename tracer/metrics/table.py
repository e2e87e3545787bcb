"""The socket table's side of /metrics: what the tracker models (sockets by state,
time in states, outcomes, stuck sockets) and what it had to correct or drop.

Everything comes from copies the tracker makes under its lock, and the stuck
scanner's latest report; nothing is computed here that the tracker does not keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import Metric

from tracer.core.detector import Report
from tracer.core.ports import PortLabels
from tracer.core.states import ROLE_NAMES, TcpState
from tracer.core.tracker import Outcomes, TrackerStats
from tracer.metrics.families import counter, fold, fold_histograms, gauge, histogram, port_state

_LISTEN = TcpState.LISTEN.value
_FAILURE_REASONS = ("no_local_port", "refused", "timeout")


class SocketTable(Protocol):
    """What the collector reads from the tracker (tracer/core/tracker.py): copies."""

    def snapshot(self) -> dict[tuple[int, int], int]: ...

    def outcomes(self) -> Outcomes: ...

    def stuck_totals(self) -> dict[tuple[int, int], int]: ...

    def stats(self) -> TrackerStats: ...


class StuckReports(Protocol):
    """The stuck scanner: its latest report."""

    report: Report


@dataclass(frozen=True)
class TableSnapshot:
    sockets: dict[tuple[int, int], int]  # (service port, state) -> sockets now
    outcomes: Outcomes
    stuck_totals: dict[tuple[int, int], int]
    report: Report | None  # None: no stuck scanner
    stats: TrackerStats

    def ports(self) -> set[int]:
        o = self.outcomes
        ports = {p for p, _ in self.sockets} | {p for p, _ in o.state_durations}
        ports |= {p for p, _ in o.connection_durations} | set(o.timewait_entered)
        ports |= {p for p, _ in o.connect_failures} | {p for p, _ in self.stuck_totals}
        if self.report is not None:
            ports |= {p for p, _ in self.report.counts} | {p for p, _ in self.report.oldest_ns}
        return ports

    def listening(self) -> set[int]:
        """Ports with a listening socket now (those listened on before the daemon started included)."""
        return {p for (p, s), n in self.sockets.items() if s == _LISTEN and n}


class TableFamilies:
    """Families from one TableSnapshot; keeps nothing between scrapes."""

    def __init__(self, tracker: SocketTable, labels: PortLabels, stuck: StuckReports | None = None) -> None:
        self._tracker = tracker
        self._labels = labels
        self._stuck = stuck

    def snapshot(self) -> TableSnapshot:
        t = self._tracker
        return TableSnapshot(t.snapshot(), t.outcomes(), t.stuck_totals(),
                             self._stuck.report if self._stuck is not None else None, t.stats())

    def model(self, snap: TableSnapshot, connecting: Iterable[int | None]) -> Iterator[Metric]:
        """The sockets, their durations and outcomes, the stuck ones, and the events taken in.
        ``connecting``: ports connect() was called for, which have both failure series
        from the first connect, so increase() sees the first failure too."""
        label = self._labels
        yield gauge("tcpstate_sockets",
                    "Sockets now in each TCP state by service port; TIME_WAIT is modelled from "
                    "orderly active closes and checked against the kernel's socket table",
                    ["port", "state"], fold(snap.sockets, label), port_state)
        o = snap.outcomes
        yield histogram(
            "tcpstate_state_duration_seconds",
            "Time a socket spent in a state, observed when it left it: SYN_SENT is the client's "
            "connect latency, SYN_RECV the server's side of the handshake, the closing states the close",
            ["port", "state"], fold_histograms(o.state_durations, label), port_state)
        yield histogram(
            "tcpstate_connection_duration_seconds",
            "Lifetime of a connection's socket from its opening (connect() or the handshake) to CLOSE, "
            "TIME_WAIT not included", ["port", "role"],
            fold_histograms(o.connection_durations, label), lambda k: [k[0], ROLE_NAMES[k[1]]])
        yield counter(
            "tcpstate_timewait_entered", "Connections that entered TIME_WAIT (orderly active closes)",
            ["port"], fold({(p,): n for p, n in o.timewait_entered.items()}, label))
        failures = {(p, reason): 0 for p in connecting for reason in _FAILURE_REASONS}
        failures.update(o.connect_failures)
        yield counter(
            "tcpstate_connect_failures",
            "connect() attempts that ended in SYN_SENT -> CLOSE: refused (a reset came back), "
            "no_local_port (EADDRNOTAVAIL: no free local port toward that destination, TIME_WAIT most often) "
            "or timeout (no answer; an application giving up on a pending connect counts here too)",
            ["port", "reason"], fold(failures, label))
        yield counter(
            "tcpstate_closes",
            "Connections closed, by who sent the first FIN (local: this end; peer; simultaneous; none: "
            "no FIN) and how this end finished: close, shutdown_wr, shutdown_rdwr (our FIN from "
            "shutdown()), reset_sent (SO_LINGER 0 or unread data), reset_received, timeout",
            ["port", "closer", "how"], fold(o.closes, label))
        if snap.report is not None:
            yield from self._stuck_families(snap.report, snap.stuck_totals)
        yield counter("tcpstate_events_received", "Events the core received from the kernel",
                      [], {(): snap.stats.events})

    def _stuck_families(self, report: Report, stuck_totals: dict[tuple[int, int], int]) -> Iterator[Metric]:
        label = self._labels
        yield gauge(
            "tcpstate_stuck_sockets",
            "Sockets now older in their state than its stuck threshold (LAST_ACK and TIME_WAIT: 2MSL)",
            ["port", "state"], fold(report.counts, label), port_state)
        # Every series the scan reports now exists in the counter too, at 0 until a socket crosses.
        totals = dict.fromkeys(report.counts, 0)
        totals.update(stuck_totals)
        yield counter(
            "tcpstate_stuck",
            "Sockets that crossed their state's stuck threshold, counted once per socket and state, "
            "also when they left before a scrape", ["port", "state"], fold(totals, label), port_state)
        yield gauge(
            "tcpstate_oldest_socket_age_seconds",
            "Age in its current state of the oldest socket of each port and state", ["port", "state"],
            fold({k: ns / 1e9 for k, ns in report.oldest_ns.items()}, label, merge=max), port_state)

    def upkeep(self, snap: TableSnapshot) -> Iterator[Metric]:
        """What the model had to correct from the kernel's socket table, its size and evictions."""
        stats = snap.stats
        yield counter(
            "tcpstate_timewait_corrections",
            "Modelled TIME_WAIT sockets corrected by what no tracepoint shows: ended by a reset after "
            "the close (reset), taken over by a new connect() (reused), absent from the kernel's socket "
            "table (absent_in_kernel: killed early, e.g. by a peer's reset), present there but not "
            "modelled (found_in_kernel), or kept past its time by a retransmitted FIN that re-armed "
            "its timer (rearmed)", ["reason"],
            {("reset",): stats.timewait_cancelled_by_reset, ("reused",): stats.timewait_reused,
             ("absent_in_kernel",): stats.timewait_reconciled_removed,
             ("found_in_kernel",): stats.timewait_reconciled_added, ("rearmed",): stats.timewait_rearmed})
        yield counter(
            "tcpstate_socket_corrections",
            "Tracked sockets corrected from the kernel's socket table because a transition was "
            "missed (see tcpstate_events_lost_total): gone from the kernel (gone), or there in "
            "another state (state)", ["reason"],
            {("gone",): stats.live_removed, ("state",): stats.live_corrected})
        yield gauge("tcpstate_sockets_tracked", "Sockets in the daemon's table: full sockets, and TIME_WAIT",
                    ["kind"], {("socket",): stats.sockets, ("timewait",): stats.timewait})
        yield counter("tcpstate_sockets_evicted",
                      "Sockets dropped from the daemon's table because it was full (max_sockets)",
                      [], {(): stats.evicted})
