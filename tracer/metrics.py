"""The Prometheus collector: metric families built from snapshots at scrape time.

It keeps no state of its own. Transition counts come from the source's exact
counters (in the kernel for the live source), socket counts from the tracker.
Labels are service port and states only; addresses, pids and socket ids belong
to the API, never to labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tracer.core.detector import Report
from tracer.core.states import STATE_NAMES, EventKind
from tracer.core.tracker import Tracker
from tracer.sources import EventSource

OTHER_PORT = "other"  # counts whose port the kernel could not keep (counter map full)
_STATE = EventKind.STATE.value


class Housekeeping(Protocol):
    report: Report
    last_reconcile_s: float
    reconcile_failures: int


class TcpStateCollector(Collector):
    def __init__(self, source: EventSource, tracker: Tracker, housekeeping: Housekeeping | None = None) -> None:
        self._source = source
        self._tracker = tracker
        self._housekeeping = housekeeping

    def collect(self) -> Iterator[Metric]:
        transitions = CounterMetricFamily(
            "tcpstate_transitions",
            "TCP state transitions reported by the kernel tracepoint sock:inet_sock_set_state, "
            "by service port (exact: counted in the kernel)",
            labels=["port", "from_state", "to_state"])
        for (port, kind, old, new), n in sorted(self._source.transition_counts().items(), key=_key):
            if kind == _STATE:
                transitions.add_metric([_port(port), STATE_NAMES[old], STATE_NAMES[new]], n)
        yield transitions

        sockets = GaugeMetricFamily(
            "tcpstate_sockets",
            "Sockets now in each TCP state by service port; TIME_WAIT is modelled from orderly "
            "active closes",
            labels=["port", "state"])
        for (port, state), n in sorted(self._tracker.snapshot().items()):
            sockets.add_metric([str(port), STATE_NAMES[state]], n)
        yield sockets

        lost = CounterMetricFamily(
            "tcpstate_events_lost",
            "Events lost, by reason. ring_buffer_full: the daemon did not keep up; the transition is "
            "still in tcpstate_transitions_total. program_not_run: the kernel skipped the program "
            "because the tracepoint fired while a BPF tracing program was already running on that "
            "CPU (an interrupt during it); that transition is counted nowhere",
            labels=["reason"])
        for reason, n in sorted(self._source.lost().items()):
            lost.add_metric([reason], n)
        yield lost

        stats = self._tracker.stats()
        corrections = CounterMetricFamily(
            "tcpstate_timewait_corrections",
            "Modelled TIME_WAIT sockets corrected by what no tracepoint shows: ended by a reset "
            "after the close (reset), taken over by a new connect() (reused), absent from the "
            "kernel's socket table (absent_in_kernel: killed early, e.g. by a peer's reset), or "
            "present there but not modelled (found_in_kernel), or kept past its time by a retransmitted "
            "FIN that re-armed its timer (rearmed)",
            labels=["reason"])
        corrections.add_metric(["reset"], stats.timewait_cancelled_by_reset)
        corrections.add_metric(["reused"], stats.timewait_reused)
        corrections.add_metric(["absent_in_kernel"], stats.timewait_reconciled_removed)
        corrections.add_metric(["found_in_kernel"], stats.timewait_reconciled_added)
        corrections.add_metric(["rearmed"], stats.timewait_rearmed)
        yield corrections

        live = CounterMetricFamily(
            "tcpstate_socket_corrections",
            "Tracked sockets corrected from the kernel's socket table because a transition was "
            "missed (see tcpstate_events_lost_total): gone from the kernel (gone), or there in "
            "another state (state)",
            labels=["reason"])
        live.add_metric(["gone"], stats.live_removed)
        live.add_metric(["state"], stats.live_corrected)
        yield live

        if self._housekeeping is not None:
            yield from self._stuck(self._housekeeping.report)
            scan = GaugeMetricFamily(
                "tcpstate_kernel_table_read_duration_seconds",
                "How long the last read of the kernel's socket table (sock_diag, every network "
                "namespace, watched states only) took")
            scan.add_metric([], self._housekeeping.last_reconcile_s)
            yield scan
            failures = CounterMetricFamily(
                "tcpstate_kernel_table_read_failures",
                "Reads of the kernel's socket table that failed, per namespace (the model went unchecked)")
            failures.add_metric([], self._housekeeping.reconcile_failures)
            yield failures

    def _stuck(self, report: Report) -> Iterator[Metric]:
        now = GaugeMetricFamily(
            "tcpstate_stuck_sockets",
            "Sockets now older in their state than its stuck threshold (LAST_ACK and TIME_WAIT: 2MSL)",
            labels=["port", "state"])
        for (port, state), n in sorted(report.counts.items()):
            now.add_metric([str(port), STATE_NAMES[state]], n)
        yield now
        total = CounterMetricFamily(
            "tcpstate_stuck",
            "Sockets that crossed their state's stuck threshold, counted once per socket and state, "
            "also when they left before a scrape",
            labels=["port", "state"])
        totals = dict.fromkeys(report.counts, 0)
        totals.update(self._tracker.stuck_totals())
        for (port, state), n in sorted(totals.items()):
            total.add_metric([str(port), STATE_NAMES[state]], n)
        yield total
        oldest = GaugeMetricFamily(
            "tcpstate_oldest_socket_age_seconds",
            "Age in its current state of the oldest socket of each port and state",
            labels=["port", "state"])
        for (port, state), age_ns in sorted(report.oldest_ns.items()):
            oldest.add_metric([str(port), STATE_NAMES[state]], age_ns / 1e9)
        yield oldest


def _port(port: int | None) -> str:
    return OTHER_PORT if port is None else str(port)


def _key(item: tuple) -> tuple:
    (port, kind, old, new), _ = item
    return (-1 if port is None else port, kind, old, new)

