"""The kernel's socket table against the model: the baseline at start, then reconciles.

No tracepoint shows a TIME_WAIT killed early or kept past its time (a retransmitted
FIN re-arms its timer), nor the sockets open before the program attached: only the
kernel's table (sock_diag, every network namespace) does. Reading it costs CPU in
proportion to the sockets in the watched states, so the interval between reads
stretches to ``stretch`` times what the last one took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from tracer.core.clock import Clock
from tracer.core.kernel_socket import KernelSocket
from tracer.core.lifecycle import Lifecycle
from tracer.core.states import TcpState
from tracer.core.tracker import RECONCILED_STATES, Tracker
from tracer.sources import EventSource, kernel_table

log = logging.getLogger(__name__)

# Every state a socket can be found in, for the baseline: all but CLOSE (gone) and
# NEW_SYN_RECV (a request, not yet a socket).
BASELINE_STATES = sorted(s.value for s in TcpState if s not in (TcpState.CLOSE, TcpState.NEW_SYN_RECV))
RECONCILE_STATES = sorted(RECONCILED_STATES | {TcpState.TIME_WAIT.value})


class KernelTable(Protocol):
    """The kernel's socket table (tracer/sources/kernel_table.py, the module itself)."""

    def dump(self, states: Iterable[int]) -> tuple[list[KernelSocket], list[str]]:
        """The sockets in ``states`` in every namespace, and one line per namespace that
        could not be read; raises kernel_table.KernelTableError when none could."""
        ...

    def owners(self) -> dict[int, tuple[int, str]]:
        """Socket inode -> (pid, comm) of a process holding it."""
        ...


class Reconciler:
    """Reads the kernel's table into the tracker: ``load_baseline`` once at start,
    ``reconcile`` every ``interval_s()``. Counts the reads that failed (per namespace)
    and keeps how long the last reconcile read took, for the metrics."""

    def __init__(self, tracker: Tracker, clock: Clock, *, every_s: float = 10.0,
                 ephemeral: range = range(32768, 61000), table: KernelTable = kernel_table,
                 grace_s: float = 2.0, stretch: float = 10.0, busy: Callable[[], bool] = lambda: False,
                 busy_every_s: float = 60.0) -> None:
        self.tracker = tracker
        self.clock = clock
        self.every_s = every_s
        self.ephemeral = ephemeral
        self.table = table
        self.grace_ns = int(grace_s * 1e9)  # events still on their way are not differences
        self.stretch = stretch
        # While the event reader is near its limit (``busy``), reads wait up to
        # ``busy_every_s`` apart: a read of a full TIME_WAIT table costs the CPU and the
        # table's locks the load wants too, and a stuck TIME_WAIT can first be told one
        # TIME_WAIT length (60 s) after its close.
        self.busy = busy
        self.busy_every_s = busy_every_s
        self.last_read_s = 0.0
        self.failures = 0
        self._read_at_ns: int | None = None  # the last read, the baseline's included

    def interval_s(self) -> float:
        """Seconds between reads: ``every_s``, or longer when reads are slow."""
        return max(self.every_s, self.stretch * self.last_read_s)

    def due_ns(self) -> int:
        """When the next reconcile is due: an interval after the last read (the baseline
        read at start is one: reading again at once would only repeat it, while a load
        that started with the daemon pays for it), or now when nothing was read."""
        if self._read_at_ns is None:
            return 0
        every = max(self.interval_s(), self.busy_every_s) if self.busy() else self.interval_s()
        return self._read_at_ns + int(every * 1e9)

    def _read(self, states: list[int], partial_ok: bool) -> list[KernelSocket] | None:
        """The sockets in ``states`` in every namespace. A namespace that could not be
        read makes the whole read None unless ``partial_ok``: judged against a partial
        table, the sockets of the unread namespace would look gone."""
        try:
            found, problems = self.table.dump(states)
        except kernel_table.KernelTableError as exc:
            problems, found = [str(exc)], None
        for problem in problems:
            self.failures += 1
            log.warning("kernel socket table: %s", problem)
        return found if partial_ok or not problems else None

    def load_baseline(self, source: EventSource, previous: Iterable[Lifecycle] = ()) -> int:
        """Loads the sockets that exist now, in every namespace, so counts are right from
        the first scrape; tells the source which ports are listened on. ``previous``: the
        lives a previous run left open, continued where the kernel still has them."""
        started = self.clock.monotonic_ns()
        found = self._read(BASELINE_STATES, partial_ok=True)
        if found is None:
            return 0
        owners = self.table.owners()
        infos = [replace(k, pid=owner[0], comm=owner[1]) if (owner := owners.get(k.inode)) else k for k in found]
        loaded = self.tracker.load_baseline(infos, started, self.ephemeral, previous, self.clock.offset_ns())
        self._read_at_ns = self.clock.monotonic_ns()
        source.seed_listeners({i.conn[1]: (i.pid, i.comm) for i in infos if i.state == TcpState.LISTEN})
        log.info("baseline: %d sockets already open in %d network namespaces (%.2f s)", loaded,
                 len({k.netns for k in found}), (self.clock.monotonic_ns() - started) / 1e9)
        return loaded

    def reconcile(self) -> tuple[int, int]:
        """TIME_WAITs the kernel ended early and ones it kept (removed, added); (0, 0)
        when the table could not be read whole."""
        started = self.clock.monotonic_ns()
        found = self._read(RECONCILE_STATES, partial_ok=False)
        self._read_at_ns = self.clock.monotonic_ns()
        if found is None:
            return 0, 0
        self.last_read_s = (self.clock.monotonic_ns() - started) / 1e9
        removed, added = self.tracker.reconcile({k.conn: k for k in found}, started, self.grace_ns)
        if removed or added:
            log.debug("TIME_WAIT reconciled with the kernel: %d ended early, %d found", removed, added)
        return removed, added
