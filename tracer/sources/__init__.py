"""Event sources: where transitions come from. The core cannot tell them apart.

A source hands out the kernel's records (tracer/core/record.py): a young socket's
life in one record, any other transition in a record of its own. The live source
reads them from the program's ring buffer (bcc.py), the replay source assembles a
recording into the same records (replay.py), so the daemon, `watch` and `replay`
apply them the one way (Tracker.apply_records) and the fixtures exercise the path
production runs.

``EventSource`` declares what the event reader (tracer/daemon/pipeline.py), the
reconciler (tracer/daemon/reconciler.py) and `watch` call. What the metrics read
from a source (its exact counters) is declared apart, and so is what the
bind-conflict thread reads (``CallSource``: the live source alone has it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tracer.core.calls import Call
from tracer.core.record import Record

if TYPE_CHECKING:
    from tracer.sources.bcc import KernelStats

# (service port, kind, old state, new state); port None = the port was lost
# because the kernel's counter map was full.
CountKey = tuple  # (int | None, int, int, int)


class EventSource(Protocol):
    def read_records(self, timeout_s: float) -> list[Record] | None:
        """The next records, oldest sent first (empty when none came within the
        timeout); None once the source is exhausted."""
        ...

    def sweep(self) -> list[Record]:
        """Lives that have been open a while, taken as they are: to be applied after
        the records read so far (empty when there are none, or none are due)."""
        ...

    def backlog(self) -> float:
        """The share of the source's buffer holding records not read yet (0 to 1):
        how close the reader is to losing events."""
        ...

    def lost(self) -> dict[str, int]:
        """Events lost, by reason: "ring_buffer_full" (counted in the kernel, never
        delivered), "program_not_run" (the kernel skipped the program: seen nowhere)."""
        ...

    def seed_listeners(self, listeners: dict[int, tuple[int, str]]) -> None:
        """Ports listened on before the source started, port -> (owner pid, comm), so
        the sockets on them are taken for the passive side."""
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


class CallSource(Protocol):
    """What the bind-conflict thread (tracer/daemon/conflicts.py) reads from the live
    source: the socket calls the program reports failed, in a ring buffer of their own."""

    def read_calls(self, timeout_s: float) -> list[Call]:
        """Calls that failed in a way the daemon explains (a TCP bind() refused with
        EADDRINUSE), oldest first, waiting up to ``timeout_s`` for one."""
        ...

    def calls_lost(self) -> int:
        """Failed calls the program could not send: their ring buffer was full."""
        ...
