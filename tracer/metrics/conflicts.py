"""Families from the bind conflicts the daemon explained (tracer/daemon/conflicts.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import Metric

from tracer.core.ports import PortLabels
from tracer.metrics.families import counter, fold


class ConflictCounts(Protocol):
    dropped: int  # refused binds never explained: their ring buffer was full

    def counts(self) -> dict[tuple[int, str], int]:
        """(port, holder) -> refused binds since the start."""
        ...


class ConflictFamilies:
    def __init__(self, conflicts: ConflictCounts, labels: PortLabels) -> None:
        self._conflicts = conflicts
        self._labels = labels

    def snapshot(self) -> dict[tuple[int, str], int]:
        return self._conflicts.counts()

    def families(self, counts: dict[tuple[int, str], int]) -> Iterator[Metric]:
        yield counter(
            "tcpstate_bind_conflicts",
            "TCP bind() calls refused with EADDRINUSE, by port and what held it in the caller's network "
            "namespace: listener, time_wait, other (sockets in other states), none (gone when looked at)",
            ["port", "holder"], fold(counts, self._labels))
        yield counter(
            "tcpstate_bind_conflicts_unexplained",
            "Refused bind() calls never explained: the program found their ring buffer full (they came "
            "faster than the daemon read their holders)", [], {(): self._conflicts.dropped})
