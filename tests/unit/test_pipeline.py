"""The event reader (daemon.pipeline.Pipeline) on a replayed recording: the records the
daemon applies, the lives a source takes, the lag, and what the health probes say."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from tracer.core import record
from tracer.core.clock import FakeClock
from tracer.core.states import TcpState as S
from tracer.core.tracker import Tracker
from tracer.daemon.pipeline import Pipeline, sent_ns
from tracer.sources.replay import ReplaySource

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
TW_NS = 60 * 10**9
END_NS = 1843270650909  # the fixture's last event


def test_a_record_is_sent_at_its_last_transition(event):
    one = record.unpack(record.pack([event(1, S.CLOSE, S.SYN_SENT, ts_ns=5)]))
    life = record.unpack(record.pack([event(1, S.CLOSE, S.SYN_SENT, ts_ns=5),
                                      event(1, S.SYN_SENT, S.CLOSE, ts_ns=9)]))
    assert (sent_ns(one), sent_ns(life)) == (5, 9)


def test_a_replay_runs_through_the_writer_thread_as_the_kernels_records():
    clock = FakeClock(start_ns=END_NS + 10**9)
    tracker = Tracker(TW_NS, 1000)
    pipeline = Pipeline(ReplaySource(FIXTURE, batch_size=8), tracker, clock)
    assert pipeline.ready() == (False, "event pipeline is not running")
    pipeline.start()
    assert pipeline.wait(10), "an exhausted source ends the writer"
    assert pipeline.failure is None
    assert tracker.events == 32
    assert {k: n for k, n in tracker.snapshot().items() if n} == {(20001, S.TIME_WAIT): 3}
    assert tracker.seen_until_ns > 0
    assert pipeline.alive() == (False, "event pipeline is not running")


class Source:
    """Two reads and a life taken by the sweep after the first; then the end."""

    def __init__(self, reads: list, taken: list) -> None:
        self.reads, self.taken, self.swept = reads, taken, 0

    def read_records(self, timeout_s: float):
        return self.reads.pop(0) if self.reads else None

    def sweep(self):
        self.swept += 1
        taken, self.taken = self.taken, []
        return taken

    def backlog(self) -> float:
        return 0.0

    def lost(self) -> dict[str, int]:
        return {}

    def seed_listeners(self, listeners) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_lives_the_source_takes_are_applied_after_the_records_read(event):
    opened = [event(7, S.CLOSE, S.SYN_SENT, ts_ns=100, dport=80, service_port=80, role=1),
              event(7, S.SYN_SENT, S.ESTABLISHED, ts_ns=200, sport=4000, dport=80, service_port=80, role=1)]
    closed = event(7, S.ESTABLISHED, S.CLOSE, ts_ns=900, sport=4000, dport=80, service_port=80, role=1)
    source = Source([[], [record.unpack(record.pack([closed]))]], [record.unpack(record.pack(opened))])
    clock = FakeClock(start_ns=1000)
    tracker = Tracker(TW_NS, 100)
    pipeline = Pipeline(source, tracker, clock)
    pipeline.start()
    assert pipeline.wait(10) and pipeline.failure is None
    assert source.swept == 2 and tracker.events == 3
    assert tracker.table.sockets == {} and tracker.outcome.connection_durations[(80, 1)].sum_ns == 800
    assert pipeline.lag_s == (1000 - 900) / 1e9


class Broken(Source):
    def read_records(self, timeout_s: float):
        raise OSError("ring buffer unmapped")


def test_a_writer_that_fails_says_why_and_is_not_alive():
    pipeline = Pipeline(Broken([], []), Tracker(TW_NS, 100), FakeClock())
    pipeline.start()
    assert pipeline.wait(10)
    assert pipeline.alive() == (False, "event pipeline stopped: OSError: ring buffer unmapped")
    assert pipeline.ready()[0] is False


class Stuck(Source):
    """One empty read, then a read that hangs until the test lets it go."""

    def __init__(self) -> None:
        super().__init__([[]], [])
        self.hang = threading.Event()

    def read_records(self, timeout_s: float):
        if self.reads:
            return self.reads.pop(0)
        self.hang.wait(10)
        return None


def test_a_writer_that_stops_checking_in_is_reported_stuck():
    clock, source = FakeClock(), Stuck()
    pipeline = Pipeline(source, Tracker(TW_NS, 100), clock, stall_s=10)
    pipeline.start()
    try:
        deadline = time.monotonic() + 10
        while not pipeline.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipeline.ready() == (True, "program attached, 0 events processed")
        clock.advance(11)
        assert pipeline.alive() == (False, "event pipeline has not checked in for 11 s")
    finally:
        source.hang.set()
        pipeline.stop()


def test_a_record_that_raises_is_counted_logged_and_skipped_and_the_rest_goes_on(event, caplog, monkeypatch):
    """Three sockets' lives in one batch, a fourth in the next; applying socket 2's
    raises. The others are applied, socket 2's record is counted, its traceback logged
    once in the window, and /healthz says degraded, not dead."""
    def life(sk: int, port: int):
        return record.unpack(record.pack([
            event(sk, S.CLOSE, S.SYN_SENT, ts_ns=100 + sk, dport=port, service_port=port, role=1),
            event(sk, S.SYN_SENT, S.CLOSE, ts_ns=200 + sk, dport=port, service_port=port, role=1)]))

    batch1 = record.RecordBatch.of([life(1, 80), life(2, 81), life(3, 82)])
    batch2 = [life(4, 83), life(2, 81)]  # a list, as a sweep hands it: socket 2 fails again
    clock = FakeClock(start_ns=1000)
    tracker = Tracker(TW_NS, 100)
    real = tracker._apply_events
    monkeypatch.setattr(tracker, "_apply_events",
                        lambda rec: (_ for _ in ()).throw(ValueError("poisoned")) if rec[1] == 2 else real(rec))
    # Every record by the long path, where the poisoned one is seen one at a time.
    monkeypatch.setattr(tracker.short, "candidates", lambda a, plans, which: np.zeros(len(a), bool))
    pipeline = Pipeline(Source([batch1, batch2], []), tracker, clock)
    with caplog.at_level("ERROR", logger="tracer.daemon.pipeline"):
        pipeline.start()
        assert pipeline.wait(10)
    assert pipeline.failure is None, pipeline.failure
    assert pipeline.records_failed == 2
    assert tracker.events == 6  # sockets 1, 3 and 4, two transitions each
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info and "poisoned" in str(errors[0].exc_info[1])
    # The writer has ended (the source ran out); ask as a running one would be asked.
    monkeypatch.setattr(pipeline._thread, "is_alive", lambda: True)
    ok, detail = pipeline.alive()
    assert ok and detail.startswith("degraded: ") and "2 record(s) failed" in detail and "poisoned" in detail


def test_healthz_tells_degraded_from_dead():
    from prometheus_client import CollectorRegistry

    from tracer.web import create_app

    class Health:
        def __init__(self, alive):
            self._alive = alive

        def alive(self):
            return self._alive

        def ready(self):
            return self._alive

    for alive, code, status in (((True, "event pipeline running"), 200, "ok"),
                                ((True, "degraded: event pipeline running, 1 record(s) failed"), 200, "degraded"),
                                ((False, "event pipeline stopped: OSError: x"), 503, "unavailable")):
        res = create_app(CollectorRegistry(), Health(alive), None, FakeClock()).test_client().get("/healthz")
        assert (res.status_code, res.get_json()["status"]) == (code, status)
