"""The daemon's own side of /metrics: how far behind it runs, its reads of the kernel's
socket table, the timeline store, the scrape itself, the kernel limits it was started
under, what it was built from, and how many ports its labels fold.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import Metric

from tracer import __version__
from tracer.core.ports import PortLabels
from tracer.metrics.families import counter, gauge, info


class EventLag(Protocol):
    """The event reader (the writer thread)."""

    lag_s: float  # how far behind the kernel the last batch was applied
    records_failed: int  # records that raised while being applied, skipped


class KernelTableReads(Protocol):
    """Whatever reads the kernel's socket table to check the model."""

    last_read_s: float  # how long the last read took
    failures: int


class TimelineWrites(Protocol):
    """Whatever hands the tracker's lives to the store."""

    written: int
    not_written: int  # lives the store refused


class TimelineSize(Protocol):
    def stats(self) -> dict[str, int]:
        """The store's size: "rows" and "bytes"."""
        ...


def build_info(bcc_version: str) -> dict[str, str]:
    """The labels of tcpstate_build_info for this process."""
    return {"version": __version__, "kernel": platform.release(), "bcc": bcc_version}


class HealthFamilies:
    """Families read from the daemon's parts at scrape time; each part is optional (a
    test or a replay has no reader, no store). Keeps nothing between scrapes: the
    previous scrape's duration is handed in."""

    def __init__(self, labels: PortLabels, limits: Mapping[str, int], build: Mapping[str, str], *,
                 lag: EventLag | None = None, kernel_table: KernelTableReads | None = None,
                 timeline: TimelineWrites | None = None, store: TimelineSize | None = None) -> None:
        self._labels = labels
        self._limits = dict(limits)
        self._build = dict(build)
        self._lag = lag
        self._kernel_table = kernel_table
        self._timeline = timeline
        self._store = store

    def folding(self) -> Iterator[Metric]:
        yield gauge("tcpstate_ports_folded",
                    "Service ports counted under port=\"other\" (past --max-ports, or ephemeral "
                    "with no listener)", [], {(): len(self._labels.folded)})

    def daemon(self, *, timeline_dropped: int, previous_scrape_s: float) -> Iterator[Metric]:
        """``timeline_dropped``: lives the tracker dropped because the store fell behind."""
        if self._lag is not None:
            yield gauge("tcpstate_event_lag_seconds",
                        "How far behind the kernel the last batch of events was applied", [], {(): self._lag.lag_s})
            yield counter("tcpstate_records_failed",
                          "Kernel records that raised while being applied and were skipped (logged with their "
                          "traceback; /healthz says degraded)", [], {(): self._lag.records_failed})
        if self._kernel_table is not None:
            yield gauge(
                "tcpstate_kernel_table_read_duration_seconds",
                "How long the last read of the kernel's socket table (sock_diag, every network "
                "namespace, watched states only) took", [], {(): self._kernel_table.last_read_s})
            yield counter(
                "tcpstate_kernel_table_read_failures",
                "Reads of the kernel's socket table that failed, per namespace (the model went unchecked)",
                [], {(): self._kernel_table.failures})
        if self._timeline is not None and self._store is not None:
            yield from self._timeline_families(self._timeline, self._store, timeline_dropped)
        yield gauge("tcpstate_scrape_duration_seconds", "How long the previous scrape took to collect",
                    [], {(): previous_scrape_s})
        yield gauge("tcpstate_kernel_limit",
                    "Kernel limits TIME_WAIT runs into: tcp_max_tw_buckets, and ephemeral_ports (the "
                    "size of net.ipv4.ip_local_port_range)", ["name"],
                    {(name,): n for name, n in self._limits.items()})
        yield info("tcpstate_build_info", "The daemon's version, the kernel and BCC", self._build)

    @staticmethod
    def _timeline_families(timeline: TimelineWrites, store: TimelineSize, dropped: int) -> Iterator[Metric]:
        yield counter("tcpstate_timeline_records_written",
                      "Socket lives written to the timeline store (an open one again as it changes)",
                      [], {(): timeline.written})
        yield counter(
            "tcpstate_timeline_records_lost",
            "Socket lives the timeline lost: write_failed (the store refused a batch), dropped (the "
            "store fell behind and the daemon's queue was full)", ["reason"],
            {("write_failed",): timeline.not_written, ("dropped",): dropped})
        sizes = store.stats()
        yield gauge("tcpstate_timeline_rows", "Socket lives in the timeline store", [], {(): sizes.get("rows", 0)})
        yield gauge("tcpstate_timeline_size_bytes", "Size of the timeline store on disk", [],
                    {(): sizes.get("bytes", 0)})
