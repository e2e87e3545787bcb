"""The Prometheus collector: metric families built from snapshots at scrape time.

It keeps no state of its own beyond the port labels (which must stay stable for the
daemon's life) and how long the last scrape took. Transition and reset counts come
from the source's exact counters (in the kernel for the live source), the rest
from the tracker. Labels are service port, states, role and reasons only;
addresses, pids and socket ids belong to the API, never to labels. Every family
with a port label goes through the same PortLabels, so counts folded into
port="other" are conserved.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tracer import __version__
from tracer.core.detector import Report
from tracer.core.ports import PortLabels
from tracer.core.states import ROLE_NAMES, STATE_NAMES, EventKind, TcpState
from tracer.core.tracker import DURATION_BUCKETS_S, Histogram, Tracker
from tracer.sources import EventSource

_STATE = EventKind.STATE.value
_LISTEN = TcpState.LISTEN.value
_CLOSE = TcpState.CLOSE.value
_RESET_DIRECTION = {EventKind.RESET_RX.value: "received", EventKind.RESET_TX.value: "sent"}
_BUCKET_LABELS = [f"{b:g}" for b in DURATION_BUCKETS_S] + ["+Inf"]


class Housekeeping(Protocol):
    report: Report
    last_reconcile_s: float
    reconcile_failures: int
    store: Any
    timeline_written: int
    timeline_not_written: int


class PipelineStats(Protocol):
    lag_s: float


def _fold(values: dict[tuple, float], label: Callable[[Any], str], merge=sum) -> dict[tuple, float]:
    """Re-keys (port, ...) by the port's label, merging what lands on one key."""
    grouped: dict[tuple, list[float]] = {}
    for (port, *rest), value in values.items():
        grouped.setdefault((label(port), *rest), []).append(value)
    return {key: merge(vals) for key, vals in grouped.items()}


def _fold_histograms(values: dict[tuple, Histogram], label: Callable[[Any], str]) -> dict[tuple, Histogram]:
    folded: dict[tuple, Histogram] = {}
    for (port, *rest), h in values.items():
        key = (label(port), *rest)
        into = folded.get(key)
        if into is None:
            folded[key] = h.copy()
        else:
            into.counts = [a + b for a, b in zip(into.counts, h.counts)]
            into.sum_ns += h.sum_ns
    return folded


def _histogram_family(name: str, doc: str, labels: list[str], values: dict[tuple, Histogram],
                      names: Callable[[tuple], list[str]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, h in sorted(values.items(), key=lambda kv: str(kv[0])):
        cumulative, buckets = 0, []
        for bound, n in zip(_BUCKET_LABELS, h.counts):
            cumulative += n
            buckets.append((bound, cumulative))
        family.add_metric(names(key), buckets, h.sum_ns / 1e9)
    return family


class TcpStateCollector(Collector):
    def __init__(self, source: EventSource, tracker: Tracker, labels: PortLabels, *,
                 housekeeping: Housekeeping | None = None, pipeline: PipelineStats | None = None,
                 limits: dict[str, int] | None = None) -> None:
        self._source = source
        self._tracker = tracker
        self._labels = labels
        self._housekeeping = housekeeping
        self._pipeline = pipeline
        self._limits = limits or {}
        self._last_scrape_s = 0.0
        self._build = {"version": __version__, "kernel": platform.release(),
                       "bcc": getattr(source, "bcc_version", "none")}

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        kernel_counts = self._source.transition_counts()
        sockets = self._tracker.snapshot()
        outcomes = self._tracker.outcomes()
        report = self._housekeeping.report if self._housekeeping else None
        stuck_totals = self._tracker.stuck_totals()

        listening = {p for (p, s), n in sockets.items() if s == _LISTEN and n}
        listening |= {p for (p, kind, old, new), n in kernel_counts.items()
                      if kind == _STATE and new == _LISTEN and p is not None}
        ports: set = {k[0] for k in kernel_counts} | {p for p, _ in sockets}
        ports |= {p for p, _ in outcomes.state_durations} | {p for p, _ in outcomes.connection_durations}
        ports |= set(outcomes.timewait_entered) | {p for p, _ in outcomes.connect_failures}
        ports |= {p for p, _ in stuck_totals}
        if report is not None:
            ports |= {p for p, _ in report.counts} | {p for p, _ in report.oldest_ns}
        self._labels.decide(ports, listening)
        label = self._labels

        # A port that makes connections has both failure series from its first connect,
        # so increase() sees the first failure too.
        failures = {(p, reason): 0 for (p, kind, old, new) in kernel_counts
                    if kind == _STATE and old == _CLOSE and new == TcpState.SYN_SENT.value
                    for reason in ("refused", "timeout")}
        failures.update(outcomes.connect_failures)
        yield from self._counts(kernel_counts, label)
        yield self._gauge("tcpstate_sockets",
                          "Sockets now in each TCP state by service port; TIME_WAIT is modelled from "
                          "orderly active closes and checked against the kernel's socket table",
                          ["port", "state"], _fold(sockets, label), lambda k: [k[0], STATE_NAMES[k[1]]])
        yield from self._outcomes(outcomes, failures, label)
        if report is not None:
            yield from self._stuck(report, stuck_totals, label)
        yield from self._self_metrics()
        self._last_scrape_s = time.monotonic() - started

    # -- families ----------------------------------------------------------------

    @staticmethod
    def _family(kind: type, name: str, doc: str, labels: list[str], values: dict,
                names: Callable[[tuple], list[str]] = list) -> Metric:
        """A counter or gauge family from {label values tuple: value}, in a stable order."""
        family = kind(name, doc, labels=labels)
        for key, n in sorted(values.items(), key=lambda kv: str(kv[0])):
            family.add_metric(names(key), n)
        return family

    def _counter(self, *args, **kwargs) -> Metric:
        return self._family(CounterMetricFamily, *args, **kwargs)

    def _gauge(self, *args, **kwargs) -> Metric:
        return self._family(GaugeMetricFamily, *args, **kwargs)

    def _counts(self, kernel_counts: dict, label: PortLabels) -> Iterator[Metric]:
        transitions = {(p, old, new): n for (p, kind, old, new), n in kernel_counts.items() if kind == _STATE}
        yield self._counter(
            "tcpstate_transitions",
            "TCP state transitions reported by the kernel tracepoint sock:inet_sock_set_state, by "
            "service port (exact: counted in the kernel; an active close is FIN_WAIT2 -> CLOSE)",
            ["port", "from_state", "to_state"], _fold(transitions, label),
            lambda k: [k[0], STATE_NAMES[k[1]], STATE_NAMES[k[2]]])
        resets = {(p, _RESET_DIRECTION[kind]): n for (p, kind, _o, _n), n in kernel_counts.items()
                  if kind in _RESET_DIRECTION}
        yield self._counter(
            "tcpstate_resets", "TCP resets sent and received by sockets of each service port "
            "(tcp:tcp_send_reset, tcp:tcp_receive_reset; counted in the kernel)",
            ["port", "direction"], _fold(resets, label))

    def _outcomes(self, outcomes, failures: dict, label: PortLabels) -> Iterator[Metric]:
        yield _histogram_family(
            "tcpstate_state_duration_seconds",
            "Time a socket spent in a state, observed when it left it: SYN_SENT is the client's "
            "connect latency, SYN_RECV the server's side of the handshake, the closing states the close",
            ["port", "state"], _fold_histograms(outcomes.state_durations, label),
            lambda k: [k[0], STATE_NAMES[k[1]]])
        yield _histogram_family(
            "tcpstate_connection_duration_seconds",
            "Lifetime of a connection's socket from its opening (connect() or the handshake) to CLOSE, "
            "TIME_WAIT not included", ["port", "role"],
            _fold_histograms(outcomes.connection_durations, label), lambda k: [k[0], ROLE_NAMES[k[1]]])
        yield self._counter(
            "tcpstate_timewait_entered", "Connections that entered TIME_WAIT (orderly active closes)",
            ["port"], _fold({(p,): n for p, n in outcomes.timewait_entered.items()}, label))
        yield self._counter(
            "tcpstate_connect_failures",
            "connect() attempts that ended in SYN_SENT -> CLOSE: refused (a reset came back) or "
            "timeout (no answer; an application giving up on a pending connect counts here too)",
            ["port", "reason"], _fold(failures, label))

    def _stuck(self, report: Report, stuck_totals: dict, label: PortLabels) -> Iterator[Metric]:
        yield self._gauge(
            "tcpstate_stuck_sockets",
            "Sockets now older in their state than its stuck threshold (LAST_ACK and TIME_WAIT: 2MSL)",
            ["port", "state"], _fold(report.counts, label), lambda k: [k[0], STATE_NAMES[k[1]]])
        totals = dict.fromkeys(report.counts, 0)
        totals.update(stuck_totals)
        yield self._counter(
            "tcpstate_stuck",
            "Sockets that crossed their state's stuck threshold, counted once per socket and state, "
            "also when they left before a scrape", ["port", "state"], _fold(totals, label),
            lambda k: [k[0], STATE_NAMES[k[1]]])
        yield self._gauge(
            "tcpstate_oldest_socket_age_seconds",
            "Age in its current state of the oldest socket of each port and state", ["port", "state"],
            _fold({k: ns / 1e9 for k, ns in report.oldest_ns.items()}, label, merge=max),
            lambda k: [k[0], STATE_NAMES[k[1]]])

    def _timeline(self, stats) -> Iterator[Metric]:
        hk = self._housekeeping
        yield self._counter("tcpstate_timeline_records_written",
                            "Socket lives written to the timeline store (an open one again as it changes)",
                            [], {(): hk.timeline_written})
        yield self._counter(
            "tcpstate_timeline_records_lost",
            "Socket lives the timeline lost: write_failed (the store refused a batch), dropped (the "
            "store fell behind and the daemon's queue was full)", ["reason"],
            {("write_failed",): hk.timeline_not_written, ("dropped",): stats.lifecycles_dropped})
        info = hk.store.stats()
        yield self._gauge("tcpstate_timeline_rows", "Socket lives in the timeline store", [],
                          {(): info.get("rows", 0)})
        yield self._gauge("tcpstate_timeline_size_bytes", "Size of the timeline store on disk", [],
                          {(): info.get("bytes", 0)})

    def _self_metrics(self) -> Iterator[Metric]:
        stats = self._tracker.stats()
        yield self._counter("tcpstate_events_received", "Events the core received from the kernel",
                            [], {(): stats.events})
        yield self._counter(
            "tcpstate_events_lost",
            "Events lost, by reason. ring_buffer_full: the daemon did not keep up; the transition is "
            "still in tcpstate_transitions_total. program_not_run: the kernel skipped the program "
            "because the tracepoint fired while a BPF tracing program was already running on that "
            "CPU (an interrupt during it); that transition is counted nowhere",
            ["reason"], {(r,): n for r, n in self._source.lost().items()})
        yield self._counter(
            "tcpstate_timewait_corrections",
            "Modelled TIME_WAIT sockets corrected by what no tracepoint shows: ended by a reset after "
            "the close (reset), taken over by a new connect() (reused), absent from the kernel's socket "
            "table (absent_in_kernel: killed early, e.g. by a peer's reset), present there but not "
            "modelled (found_in_kernel), or kept past its time by a retransmitted FIN that re-armed "
            "its timer (rearmed)", ["reason"],
            {("reset",): stats.timewait_cancelled_by_reset, ("reused",): stats.timewait_reused,
             ("absent_in_kernel",): stats.timewait_reconciled_removed,
             ("found_in_kernel",): stats.timewait_reconciled_added, ("rearmed",): stats.timewait_rearmed})
        yield self._counter(
            "tcpstate_socket_corrections",
            "Tracked sockets corrected from the kernel's socket table because a transition was "
            "missed (see tcpstate_events_lost_total): gone from the kernel (gone), or there in "
            "another state (state)", ["reason"],
            {("gone",): stats.live_removed, ("state",): stats.live_corrected})
        yield self._gauge("tcpstate_sockets_tracked",
                          "Sockets in the daemon's table: full sockets, and TIME_WAIT",
                          ["kind"], {("socket",): stats.sockets, ("timewait",): stats.timewait})
        yield self._counter("tcpstate_sockets_evicted",
                            "Sockets dropped from the daemon's table because it was full (max_sockets)",
                            [], {(): stats.evicted})
        yield self._gauge("tcpstate_ports_folded",
                          "Service ports counted under port=\"other\" (past --max-ports, or ephemeral "
                          "with no listener)", [], {(): len(self._labels.folded)})
        kernel = getattr(self._source, "kernel_stats", None)
        if kernel is not None:
            k = kernel()
            yield self._gauge("tcpstate_kernel_map_entries", "Entries in the program's maps now",
                              ["map"], {("counters",): k.counters})
            yield self._gauge("tcpstate_kernel_map_capacity", "Entries the program's maps can hold",
                              ["map"], {("counters",): k.counters_capacity, ("sockets",): k.socks_capacity,
                                        ("lives",): k.lives_capacity})
            yield self._counter(
                "tcpstate_kernel_map_full",
                "Updates refused by a full map: counters (the transition was still counted, under "
                "port=\"other\"), sockets (a socket's role and owner were not remembered), lives (a "
                "young socket's transitions were sent one by one instead of in one record)",
                ["map"], {("counters",): k.counts_full, ("sockets",): k.socks_full, ("lives",): k.lives_full})
        decode = getattr(self._source, "decode_errors", None)
        yield self._counter("tcpstate_decode_errors",
                            "Ring buffer records the daemon could not decode and skipped", [],
                            {(): decode() if decode else 0})
        if self._pipeline is not None:
            yield self._gauge("tcpstate_event_lag_seconds",
                              "How far behind the kernel the last batch of events was applied", [],
                              {(): self._pipeline.lag_s})
        if self._housekeeping is not None:
            yield self._gauge(
                "tcpstate_kernel_table_read_duration_seconds",
                "How long the last read of the kernel's socket table (sock_diag, every network "
                "namespace, watched states only) took", [], {(): self._housekeeping.last_reconcile_s})
            yield self._counter(
                "tcpstate_kernel_table_read_failures",
                "Reads of the kernel's socket table that failed, per namespace (the model went unchecked)",
                [], {(): self._housekeeping.reconcile_failures})
            if self._housekeeping.store is not None:
                yield from self._timeline(stats)
        yield self._gauge("tcpstate_scrape_duration_seconds", "How long the previous scrape took to collect",
                          [], {(): self._last_scrape_s})
        yield self._gauge("tcpstate_kernel_limit",
                          "Kernel limits TIME_WAIT runs into: tcp_max_tw_buckets, and ephemeral_ports (the "
                          "size of net.ipv4.ip_local_port_range)", ["name"],
                          {(name,): n for name, n in self._limits.items()})
        info = GaugeMetricFamily("tcpstate_build_info", "The daemon's version, the kernel and BCC",
                                 labels=sorted(self._build))
        info.add_metric([self._build[k] for k in sorted(self._build)], 1)
        yield info


def port_label_values(metrics: Iterable[Metric]) -> set[str]:
    """Every value of the port label in a collection, for tests and checks."""
    return {s.labels["port"] for m in metrics for s in m.samples if "port" in s.labels}
