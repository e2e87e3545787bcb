"""The timeline's writer: socket lives from the tracker to the store, the event reader first.

The reader shares the interpreter with this thread, and what it falls behind on is
lost for the metrics too, where a life left for the next round is at worst dropped
from the timeline (and counted). So the store gets what is left of the reader's
time: in chunks (one transaction each), for a bounded time a round, and not at all
while the reader is busy, unless the lives waiting approach their bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tracer.core.clock import Clock
from tracer.core.tracker import Tracker
from tracer.daemon.changes import TimelineChanges
from tracer.daemon.memory import release_free_memory
from tracer.store import LifecycleStore, StoreError

log = logging.getLogger(__name__)


class TimelineFlusher:
    """Writes the lives that changed to the store, ``chunk`` at a time.

    The policy, each number a parameter:
    - an open socket is written once it is ``settle_s`` old, or when it ends if that
      is sooner: most connections end within seconds, and are then written once;
    - after the first chunk, a round goes on only while the reader is not at risk of
      losing events (``backlog()``, the share of the source's buffer unread, under
      ``behind_fill``) and for at most ``round_s``: lives may come faster than the
      store takes them, and the scan, the reconcile and the counters must not wait;
    - nothing is written while the reader takes in more than ``busy_events_per_s``
      (near its limit) and less than half of the lives that may wait are waiting;
    - a final flush writes everything, however far behind.
    """

    def __init__(self, tracker: Tracker, store: LifecycleStore, clock: Clock, changes: TimelineChanges,
                 backlog: Callable[[], float] = lambda: 0.0, *, settle_s: float = 2.0, chunk: int = 16_384,
                 round_s: float = 0.5, behind_fill: float = 0.25, busy_events_per_s: float = 100_000,
                 release: Callable[[], None] = release_free_memory) -> None:
        self.tracker = tracker
        self.store = store
        self.clock = clock
        self.changes = changes
        self.backlog = backlog
        self.settle_ns = int(settle_s * 1e9)
        self.chunk = chunk
        self.round_ns = int(round_s * 1e9)
        self.behind_fill = behind_fill
        self.busy_events_per_s = busy_events_per_s
        self.release = release  # a burst's rows would stay in the RSS
        self.written = 0
        self.not_written = 0  # lives the store refused
        self.events_per_s = 0.0  # the reader's intake, measured between rounds
        # Measured from the start, so that the first round already knows it: a daemon
        # started into full churn would otherwise spend its first round on the store.
        self._rate_at_ns, self._rate_events = clock.monotonic_ns(), tracker.events

    def _busy(self, now_ns: int) -> bool:
        tracker = self.tracker
        events = tracker.events
        if now_ns > self._rate_at_ns:
            self.events_per_s = (events - self._rate_events) * 1e9 / (now_ns - self._rate_at_ns)
        self._rate_at_ns, self._rate_events = now_ns, events
        return self.reader_busy() and tracker.pending_ended() < tracker.max_pending_lifecycles // 2

    def reader_busy(self) -> bool:
        """Whether the reader took in more than ``busy_events_per_s`` between the last two rounds."""
        return self.events_per_s > self.busy_events_per_s

    def flush(self, final: bool = False) -> int:
        """One round; returns the lives written."""
        clock, tracker, chunk = self.clock, self.tracker, self.chunk
        now = clock.monotonic_ns()
        if self._busy(now) and not final:
            return 0
        born_before = None if final else now - self.settle_ns
        if final:
            tracker.release_closes()
        offset, written, failure = clock.offset_ns(), 0, None
        round_ends = now + self.round_ns
        while records := tracker.drain_raw(born_before, chunk):
            try:
                self.store.write(records, offset)
                written += len(records)
            except StoreError as exc:  # the store counts them as dropped
                self.not_written += len(records)
                failure = exc
            if len(records) < chunk or (not final and (self.backlog() > self.behind_fill
                                                       or clock.monotonic_ns() > round_ends)):
                break
        if not written and failure is None:
            return 0  # nothing was waiting
        del records
        self.release()
        if failure is not None:
            log.warning("timeline: socket records not written: %s", failure)
        if written:
            self.written += written
            self.changes.changed(clock.now())
        return written

    def retain(self) -> int:
        """Deletes what the store's retention no longer keeps; returns how many went."""
        return self.store.retain(self.clock.now())
