"""The Prometheus collector: metric families built from snapshots at scrape time.

The families come from three sources, one module each: the kernel's counters
(kernel.py), the socket table the tracker models (table.py) and the daemon's own
health (health.py); and the bind conflicts it explained (conflicts.py), last.
families.py holds the builders they share. Labels are service
port, states, role and reasons only; addresses, pids and socket ids belong to the
API, never to labels.

One collector reads all three in a scrape because two things span them: every
family with a port label goes through the same PortLabels, whose decisions depend
on every port of the scrape (listening ones first, up to the cap), so counts folded
into port="other" are conserved and a port keeps its label for the daemon's life;
and /metrics lists the families in the order it always has, which interleaves the
sources (tests/unit/test_exposition.py pins it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tracer.core.ports import PortLabels
from tracer.metrics.conflicts import ConflictFamilies
from tracer.metrics.families import port_label_values
from tracer.metrics.health import HealthFamilies, build_info
from tracer.metrics.kernel import KernelFamilies
from tracer.metrics.table import TableFamilies

__all__ = ["ConflictFamilies", "HealthFamilies", "KernelFamilies", "TableFamilies", "TcpStateCollector", "build_info",
           "port_label_values"]


class TcpStateCollector(Collector):
    """Each scrape: one snapshot of the kernel's counters and one of the socket table,
    the labels of new ports decided over both, then the families. Keeps the port
    labels (through PortLabels) and how long the previous scrape took; nothing else."""

    def __init__(self, kernel: KernelFamilies, table: TableFamilies, health: HealthFamilies, labels: PortLabels,
                 timer: Callable[[], float] = time.monotonic, conflicts: ConflictFamilies | None = None) -> None:
        self._kernel = kernel
        self._conflicts = conflicts
        self._table = table
        self._health = health
        self._labels = labels  # the instance the three parts label with
        self._timer = timer
        self._last_scrape_s = 0.0

    def collect(self) -> Iterator[Metric]:
        started = self._timer()
        kernel, table = self._kernel.snapshot(), self._table.snapshot()
        conflicts = self._conflicts.snapshot() if self._conflicts is not None else {}
        self._labels.decide(kernel.ports() | table.ports() | {p for p, _ in conflicts},
                            kernel.listening() | table.listening())
        yield from self._kernel.counts(kernel)
        yield from self._table.model(table, kernel.connecting())
        yield from self._kernel.losses(kernel)
        yield from self._table.upkeep(table)
        yield from self._health.folding()
        yield from self._kernel.program(kernel)
        yield from self._health.daemon(timeline_dropped=table.stats.lifecycles_dropped,
                                       previous_scrape_s=self._last_scrape_s)
        if self._conflicts is not None:
            yield from self._conflicts.families(conflicts)
        self._last_scrape_s = self._timer() - started
