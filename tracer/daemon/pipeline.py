"""The event reader: the one writer thread that owns the tracker.

It reads the source's records in batches and applies them, then the lives the
source took (sweep), then ends the TIME_WAITs whose time is up. Nothing slow sits
on this path: the web and the housekeeping threads read snapshots.
"""

from __future__ import annotations

import logging
import threading

from tracer.core.clock import Clock
from tracer.core.record import MORE_AT, MORE_TS_AT, Record, RecordBatch
from tracer.core.tracker import BadRecords, Tracker
from tracer.sources import EventSource

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.2
FAILURE_LOG_S = 10.0  # a failing record's traceback is logged at most this often
# The writer checks in at least every POLL_TIMEOUT_S; this much silence means it is stuck.
STALL_S = 10.0


def sent_ns(rec: Record) -> int:
    """When the kernel sent a record: a life is sent at its last transition."""
    more = rec[MORE_AT]
    return rec[MORE_TS_AT + more - 1] if more else rec[0]


class Pipeline:
    """Source -> tracker, driven by one writer thread; answers the health probes
    (tracer/web/health.py Health)."""

    def __init__(self, source: EventSource, tracker: Tracker, clock: Clock, *,
                 poll_timeout_s: float = POLL_TIMEOUT_S, stall_s: float = STALL_S) -> None:
        self.source = source
        self.tracker = tracker
        self.clock = clock
        self.poll_timeout_s = poll_timeout_s
        self.stall_s = stall_s
        self.failure: str | None = None
        self._stop = threading.Event()
        self._cycles = 0
        self._heartbeat_ns = clock.monotonic_ns()
        self.lag_s = 0.0  # how far behind the kernel the last batch was applied
        # Records that raised while being applied, skipped; the pipeline went on after each.
        self.records_failed = 0
        self.last_record_failure: str | None = None
        self._logged_ns: int | None = None
        self._unlogged = 0
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once the writer has stopped (asked to, or failed, or the source ended)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        source, tracker, clock, timeout_s = self.source, self.tracker, self.clock, self.poll_timeout_s
        try:
            while not self._stop.is_set():
                batch = source.read_records(timeout_s)
                if batch is None:
                    break
                now = clock.monotonic_ns()
                if batch:
                    self.lag_s = max(0, now - sent_ns(batch[0])) / 1e9
                    self._apply(batch)
                    tracker.seen_until_ns = sent_ns(batch[-1])
                else:
                    self.lag_s = 0.0
                    tracker.seen_until_ns = now  # everything sent has been applied
                taken = source.sweep()
                if taken:
                    self._apply(taken)
                tracker.expire(now)
                self._heartbeat_ns = now
                self._cycles += 1
        except Exception as exc:  # the writer must not die silently: record it, the daemon exits
            self.failure = f"event pipeline stopped: {type(exc).__name__}: {exc}"
            log.exception("event pipeline stopped")

    def _apply(self, batch) -> None:
        """Applies a batch; a record that raises is counted, logged and skipped, and the
        rest of the batch goes on (one bad record must not stop the daemon)."""
        while True:
            try:
                self.tracker.apply_records(batch)
                return
            except BadRecords as exc:
                self._failed(exc)
                if exc.end >= len(batch):
                    return
                batch = (RecordBatch(batch.data[exc.end * batch.stride:], batch.header, batch.stride)
                         if isinstance(batch, RecordBatch) else batch[exc.end:])

    def _failed(self, exc: BadRecords) -> None:
        self.records_failed += exc.end - exc.first
        self.last_record_failure = f"{type(exc.cause).__name__}: {exc.cause}"
        now = self.clock.monotonic_ns()
        if self._logged_ns is not None and now - self._logged_ns < FAILURE_LOG_S * 1e9:
            self._unlogged += exc.end - exc.first
            return
        more = f" ({self._unlogged} more failed since the last report)" if self._unlogged else ""
        log.error("skipped %d record(s) that failed to apply%s; %d in all", exc.end - exc.first, more,
                  self.records_failed, exc_info=exc.cause)
        self._logged_ns, self._unlogged = now, 0

    # Health, as the web probes see it.
    def alive(self) -> tuple[bool, str]:
        if self.failure:
            return False, self.failure
        if not self._thread.is_alive():
            return False, "event pipeline is not running"
        silent_s = (self.clock.monotonic_ns() - self._heartbeat_ns) / 1e9
        if silent_s > self.stall_s:
            return False, f"event pipeline has not checked in for {silent_s:.0f} s"
        if self.records_failed:
            return True, (f"degraded: event pipeline running, {self.records_failed} record(s) failed to apply "
                          f"and were skipped (last: {self.last_record_failure})")
        return True, "event pipeline running"

    def ready(self) -> tuple[bool, str]:
        ok, detail = self.alive()
        if not ok:
            return ok, detail
        if not self._cycles:
            return False, "program attached, first read of the ring buffer pending"
        return True, f"program attached, {self.tracker.events} events processed"
