"""What became of the sockets: time spent in each state, connection lifetimes, TIME_WAITs
entered, failed connects and stuck crossings, by service port.

The tracker observes into these one socket at a time on its long path, and a whole
run of records at once on its short path (``observe_spans``), with the same result.
Readers take copies under the tracker's lock (``snapshot``).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

# Histogram buckets for the time spent in a state and for whole connections:
# 1-2-5 steps from 10 microseconds to 10 minutes (upper bounds, seconds).
DURATION_BUCKETS_S: tuple[float, ...] = tuple(
    m * 10.0 ** e for e in range(-5, 3) for m in (1, 2, 5)) + (600.0,)
BOUNDS_NS = [round(b * 1e9) for b in DURATION_BUCKETS_S]
_BOUNDS = np.array(BOUNDS_NS, dtype=np.int64)
_BUCKETS = len(BOUNDS_NS) + 1  # the last one is +Inf


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum, in nanoseconds."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(BOUNDS_NS, ns)] += 1
        self.sum_ns += ns

    def add(self, counts: list[int], sum_ns: int) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts)]
        self.sum_ns += sum_ns

    def copy(self) -> "Histogram":
        h = Histogram()
        h.counts = list(self.counts)
        h.sum_ns = self.sum_ns
        return h


@dataclass(frozen=True)
class OutcomesSnapshot:
    state_durations: dict[tuple[int, int], Histogram]
    connection_durations: dict[tuple[int, int], Histogram]
    timewait_entered: dict[int, int]
    connect_failures: dict[tuple[int, str], int]
    closes: dict[tuple[int, str, str], int]


class Outcomes:
    """The counters and histograms; keys are (service port, state), (service port,
    role), service port, (service port, reason)."""

    def __init__(self) -> None:
        self.state_durations: dict[tuple[int, int], Histogram] = {}
        self.connection_durations: dict[tuple[int, int], Histogram] = {}
        self.timewait_entered_by_port: dict[int, int] = {}
        self.connect_failures: dict[tuple[int, str], int] = {}
        self.closes: dict[tuple[int, str, str], int] = {}  # (port, closer, how) -> connections
        # (service port, state) -> sockets that crossed that state's stuck threshold.
        self.stuck_total: dict[tuple[int, int], int] = {}

    @staticmethod
    def observe(table: dict, key: tuple, ns: int) -> None:
        h = table.get(key)
        if h is None:
            h = table[key] = Histogram()
        h.observe(ns)

    def closed(self, port: int, closer: str, how: str, n: int = 1) -> None:
        key = (port, closer, how)
        self.closes[key] = self.closes.get(key, 0) + n

    def connect_failed(self, port: int, reason: str, n: int = 1) -> None:
        key = (port, reason)
        self.connect_failures[key] = self.connect_failures.get(key, 0) + n

    def timewait_entered(self, port: int, n: int = 1) -> None:
        self.timewait_entered_by_port[port] = self.timewait_entered_by_port.get(port, 0) + n

    def stuck(self, port: int, state: int) -> None:
        key = (port, state)
        self.stuck_total[key] = self.stuck_total.get(key, 0) + 1

    def observe_spans(self, table: dict, ports: np.ndarray, keys: list[int], spans: np.ndarray) -> set[tuple]:
        """Observes ``spans[i, j]`` nanoseconds under (ports[i], keys[j]) for a run of
        records that all visited the same ``keys`` (states, or one role), at once.
        Returns the (port, key) pairs observed."""
        width = len(keys)
        uports, port_at = np.unique(ports, return_inverse=True)
        buckets = np.searchsorted(_BOUNDS, spans, side="left")
        cell = port_at.reshape(-1, 1) * width + np.arange(width)
        counts = np.bincount((cell * _BUCKETS + buckets).ravel(), minlength=len(uports) * width * _BUCKETS)
        # Sums per cell from a cumulative sum of the spans sorted by cell: exact integers
        # (bincount's weights would be floats).
        flat_cells = cell.ravel()
        order = np.argsort(flat_cells, kind="stable")
        bounds = np.searchsorted(flat_cells[order], np.arange(len(uports) * width + 1)).tolist()
        cumulative = np.concatenate(([0], np.cumsum(spans.ravel()[order]))).tolist()
        counts = counts.reshape(len(uports), width, _BUCKETS).tolist()
        seen = set()
        for p, port in enumerate(uports.tolist()):
            for j, key in enumerate(keys):
                c = p * width + j
                if bounds[c] == bounds[c + 1]:
                    continue
                k = (port, key)
                h = table.get(k)
                if h is None:
                    h = table[k] = Histogram()
                h.add(counts[p][j], cumulative[bounds[c + 1]] - cumulative[bounds[c]])
                seen.add(k)
        return seen

    def snapshot(self) -> OutcomesSnapshot:
        return OutcomesSnapshot(
            state_durations={k: h.copy() for k, h in self.state_durations.items()},
            connection_durations={k: h.copy() for k, h in self.connection_durations.items()},
            timewait_entered=dict(self.timewait_entered_by_port),
            connect_failures=dict(self.connect_failures),
            closes=dict(self.closes),
        )


def connect_failure(reset: bool, sport: int) -> str:
    """Why a connect() ended in SYN_SENT -> CLOSE: a reset came back (refused); no local
    port was free (the kernel closes it before it binds one, so its port is still 0:
    EADDRNOTAVAIL, microseconds after SYN_SENT); or no answer (timeout)."""
    if reset:
        return "refused"
    return "timeout" if sport else "no_local_port"
