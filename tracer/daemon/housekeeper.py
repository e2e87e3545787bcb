"""Everything off the event path, in one thread, each part on its interval.

Every ``scan_s``, in this order: the kernel's table is reconciled when that is due
(Reconciler.due_ns: an interval after the last read, the baseline included), the stuck sockets are scanned, losses are
logged, the timeline is written, and its retention applied when that is due
(``retain_every_s``). When the thread stops, a final flush writes what changed since
the last round. One thread for all of it: the parts share the interpreter with the
event reader, and running them one after another bounds what they take from it.
"""

from __future__ import annotations

import threading

from tracer.core.clock import Clock
from tracer.daemon.flusher import TimelineFlusher
from tracer.daemon.losses import LossLogger
from tracer.daemon.reconciler import Reconciler
from tracer.daemon.stuck import StuckScanner


class Housekeeper:
    """Runs the housekeeping parts (``round`` is one pass, for tests to drive with a
    FakeClock); the flusher is None when there is no timeline."""

    def __init__(self, clock: Clock, scanner: StuckScanner, reconciler: Reconciler, losses: LossLogger,
                 flusher: TimelineFlusher | None = None, *, scan_s: float = 1.0,
                 retain_every_s: float = 10.0) -> None:
        self.clock = clock
        self.scanner = scanner
        self.reconciler = reconciler
        self.losses = losses
        self.flusher = flusher
        self.scan_s = scan_s
        # Cheap when there is nothing to delete; at full churn a long interval would
        # leave a large deletion for one round.
        self.retain_every_ns = int(retain_every_s * 1e9)
        self._next_retain_ns = clock.monotonic_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)

    def start(self) -> None:
        self._next_retain_ns = self.clock.monotonic_ns()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def round(self) -> None:
        clock = self.clock
        if clock.monotonic_ns() >= self.reconciler.due_ns():
            self.reconciler.reconcile()
        self.scanner.scan()
        self.losses.log()
        if self.flusher is not None:
            self.flusher.flush()
            if clock.monotonic_ns() >= self._next_retain_ns:
                self.flusher.retain()
                self._next_retain_ns = clock.monotonic_ns() + self.retain_every_ns

    def _run(self) -> None:
        while not self._stop.wait(self.scan_s):
            self.round()
        if self.flusher is not None:
            self.flusher.flush(final=True)  # what changed since the last round, before the daemon exits
