"""The event reader (daemon.pipeline.Pipeline) on a replayed recording: the records the
daemon applies, the lives a source takes, the lag, and what the health probes say."""

from __future__ import annotations

import threading
import time
from pathlib import Path

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
