"""Event sources: where transitions come from. The core cannot tell them apart.

A source hands out batches of event tuples (tracer/core/record.py) and keeps the
exact per-(service port, kind, transition) counts the kernel program keeps, so
metrics can be checked against a replay as well as against the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tracer.core.record import Event

if TYPE_CHECKING:
    from tracer.sources.bcc import KernelStats

# (service port, kind, old state, new state); port None = the port was lost
# because the kernel's counter map was full.
CountKey = tuple  # (int | None, int, int, int)


class EventSource(Protocol):
    def read(self, timeout_s: float) -> list[Event] | None:
        """The next batch (possibly empty after the timeout); None once the source is exhausted."""
        ...

    def transition_counts(self) -> dict[CountKey, int]:
        """Exact counts of every transition and reset seen, by service port."""
        ...

    def lost(self) -> dict[str, int]:
        """Events lost, by reason: "ring_buffer_full" (counted in the kernel, never
        delivered), "program_not_run" (the kernel skipped the program: seen nowhere)."""
        ...

    def close(self) -> None: ...


class KernelCounters(Protocol):
    """What the metrics collector reads from a source (tracer/metrics/kernel.py): the
    counts the kernel program keeps, and the program's own statistics. A replay has no
    program: no statistics (None), no decode errors, no BCC."""

    bcc_version: str  # "none" without BCC

    def transition_counts(self) -> dict[CountKey, int]: ...

    def lost(self) -> dict[str, int]: ...

    def kernel_stats(self) -> KernelStats | None:
        """The program's maps and statistics (tracer/sources/bcc.py), None without a program."""
        ...

    def decode_errors(self) -> int:
        """Records that could not be decoded and were skipped."""
        ...
