"""The timeline's flush (daemon.flusher.TimelineFlusher) on a real tracker and a real
SQLite store: in chunks, the event reader first, every life accounted for."""

from __future__ import annotations

from pathlib import Path

from tracer.core import record
from tracer.core.clock import FakeClock
from tracer.core.tracker import Tracker
from tracer.daemon.changes import TimelineChanges
from tracer.daemon.flusher import TimelineFlusher
from tracer.sources.replay import ReplaySource
from tracer.store.sqlite import SqliteStore

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
TW_NS = 60 * 10**9


def churn(tracker: Tracker, laps: int, first_lap: int = 0) -> int:
    """``laps`` replays of 3 connections (other socket ids each lap), all ended: 7 lives a
    lap. Returns the time they all ended by."""
    last = 0
    for lap in range(first_lap, first_lap + laps):
        source = ReplaySource(FIXTURE)
        while (batch := source.read_records()) is not None:
            tracker.apply_records([(rec[0], rec[1] + (lap << 32), *rec[2:]) for rec in batch])
            last = max(last, *(ev[0] for rec in batch for ev in record.events_of(rec)))
    tracker.expire(last + TW_NS + 1)  # the clients' TIME_WAITs end too
    return last + TW_NS + 1


def churned(laps: int, pending_max: int | None = None) -> tuple[Tracker, FakeClock]:
    """A tracker after ``churn``; at most ``pending_max`` lives wait for the store, when given."""
    tracker = Tracker(TW_NS, 10_000, keep_lifecycles=True)
    if pending_max is not None:
        tracker.journal.max_pending = pending_max
    return tracker, FakeClock(start_ns=churn(tracker, laps) + 1)


def test_a_limited_drain_gives_the_first_ended_first_and_keeps_the_rest():
    everything = churned(2)[0].drain_raw()
    tracker, _ = churned(2)
    first = tracker.drain_raw(limit=5)
    rest = tracker.drain_raw(limit=100)
    assert first + rest == everything and len(first) == 5
    assert tracker.drain_raw(limit=5) == []


def test_pending_ended_lives_are_bounded_and_the_dropped_counted():
    every = len(churned(4)[0].drain_raw())
    bounded, _ = churned(4, pending_max=8)
    kept = len(bounded.drain_raw())
    assert kept <= 8 < every
    assert bounded.stats().lifecycles_dropped == every - kept


def flusher(tracker: Tracker, clock: FakeClock, store, behind: bool, **policy) -> TimelineFlusher:
    return TimelineFlusher(tracker, store, clock, TimelineChanges(), lambda: 0.5 if behind else 0.0,
                           chunk=4, **policy)


def test_everything_is_written_in_chunks_while_the_reader_keeps_up(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    changes = TimelineChanges()
    flush = TimelineFlusher(tracker, store, clock, changes, chunk=4)
    assert flush.flush() == 21
    assert store.stats()["rows"] == 21
    assert (changes.version, changes.written_at) == (1, clock.now()), "the page is told, with the time"
    assert flush.flush() == 0 and changes.version == 1, "nothing waited: no change"


def test_a_reader_falling_behind_leaves_the_rest_for_the_next_round(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    flush = flusher(tracker, clock, store, behind=True)
    assert [flush.flush() for _ in range(6)] == [4, 4, 4, 4, 4, 1]
    assert store.stats()["rows"] == 21
    assert tracker.stats().lifecycles_dropped == 0


class SlowStore(SqliteStore):
    """Each chunk takes a fifth of a second, on the test's clock."""

    clock: FakeClock

    def write(self, lives: list[tuple], offset_ns: int) -> None:
        self.clock.advance(0.2)
        super().write(lives, offset_ns)


def test_a_round_of_writing_ends_in_time_however_much_waits(tmp_path):
    """Lives may come faster than the store takes them: a round stops after round_s,
    so that the housekeeper's other work (scan, reconcile, counters) goes on."""
    tracker, clock = churned(3)
    store = SlowStore(tmp_path / "t.db", 86400, 1 << 30)
    store.clock = clock
    flush = flusher(tracker, clock, store, behind=False, round_s=0.5)
    rounds = [flush.flush() for _ in range(3)]
    assert 4 <= rounds[0] < 21 and sum(rounds) == 21, rounds
    assert flush.written == 21 and store.stats()["rows"] == 21
    tracker, clock = churned(3)
    slow = SlowStore(tmp_path / "u.db", 86400, 1 << 30)
    slow.clock = clock
    assert flusher(tracker, clock, slow, behind=False, round_s=0.5).flush(final=True) == 21, \
        "the last one writes everything"


def test_the_last_flush_writes_everything_however_far_behind(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    assert flusher(tracker, clock, store, behind=True).flush(final=True) == 21


def test_lives_the_store_refuses_are_counted_and_the_rest_written(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    store._conn.execute("PRAGMA query_only = 1")  # as a disk gone read-only would refuse them
    flush = flusher(tracker, clock, store, behind=False)
    assert flush.flush() == 0
    assert flush.not_written == 21
    store._conn.execute("PRAGMA query_only = 0")
    churn(tracker, 1, first_lap=3)
    assert flush.flush() == 7 and flush.not_written == 21


def test_a_busy_reader_puts_the_timeline_off_until_half_the_backlog_waits(tmp_path):
    # 22 ended lives may wait here (half: 11); three laps leave 21 waiting, one lap 7.
    tracker, clock = churned(3, pending_max=22)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    flush = flusher(tracker, clock, store, behind=False, busy_events_per_s=10)
    assert flush.flush() == 21  # the first round has no rate yet
    lap = 0
    for laps, written in ((3, 21), (1, 0)):
        lap += 3
        churn(tracker, laps, first_lap=lap)  # 32 events a lap, in the second since
        clock.advance(1.0)
        assert flush.flush() == written  # over half waiting: all; else busy: none
        assert flush.events_per_s == 32 * laps


def test_retention_is_applied_at_the_clocks_unix_time(tmp_path):
    tracker, clock = churned(1)
    store = SqliteStore(tmp_path / "t.db", 120, 1 << 30)  # the lives ended a minute before the clock's start
    flush = flusher(tracker, clock, store, behind=False)
    assert flush.flush() == 7
    assert flush.retain() == 0, "ended a minute ago"
    clock.advance(120)
    assert flush.retain() == 7 and store.stats()["rows"] == 0


def test_the_first_round_already_knows_the_readers_intake(tmp_path):
    """A daemon started into full churn: its first round sees the reader busy and leaves
    the store alone, as every later round does (the rate is measured from the start)."""
    tracker = Tracker(TW_NS, 10_000, keep_lifecycles=True)
    tracker.journal.max_pending = 22
    clock = FakeClock()
    flush = flusher(tracker, clock, SqliteStore(tmp_path / "t.db", 86400, 1 << 30), behind=False,
                    busy_events_per_s=10)
    churn(tracker, 1)  # 7 ended lives, 32 events
    clock.advance(1.0)
    assert flush.flush() == 0
    assert flush.events_per_s == 32 and tracker.pending_ended() == 7
