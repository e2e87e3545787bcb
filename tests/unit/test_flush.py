"""The timeline's flush (daemon.Housekeeper.flush_timeline) on a real tracker and a
real SQLite store: in chunks, the event reader first, every life accounted for."""

from __future__ import annotations

from pathlib import Path

from tracer.core.clock import FakeClock
from tracer.core.tracker import Tracker
from tracer.daemon import Housekeeper
from tracer.sources.replay import ReplaySource
from tracer.store.sqlite import SqliteStore

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
TW_NS = 60 * 10**9


def churned(laps: int, pending_max: int | None = None) -> tuple[Tracker, FakeClock]:
    """``laps`` replays of 3 connections (other socket ids each lap), all ended: 7 lives a
    lap; at most ``pending_max`` of them wait for the store, when given."""
    tracker = Tracker(TW_NS, 10_000, keep_lifecycles=True)
    if pending_max is not None:
        tracker.journal.max_pending = pending_max
    last = 0
    for lap in range(laps):
        source = ReplaySource(FIXTURE)
        while (batch := source.read()) is not None:
            tracker.apply_batch([(ev[0], ev[1] + (lap << 32), *ev[2:]) for ev in batch])
            last = batch[-1][0]
    tracker.expire(last + TW_NS + 1)  # the clients' TIME_WAITs end too
    return tracker, FakeClock(start_ns=last + TW_NS + 2)


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


def housekeeper(tracker: Tracker, clock: FakeClock, store, behind: bool) -> Housekeeper:
    hk = Housekeeper(tracker, clock, reconcile_s=3600, store=store, behind=lambda: behind)
    hk.WRITE_CHUNK = 4
    return hk


def test_everything_is_written_in_chunks_while_the_reader_keeps_up(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    assert housekeeper(tracker, clock, store, behind=False).flush_timeline() == 21
    assert store.stats()["rows"] == 21


def test_a_reader_falling_behind_leaves_the_rest_for_the_next_round(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    hk = housekeeper(tracker, clock, store, behind=True)
    assert [hk.flush_timeline() for _ in range(6)] == [4, 4, 4, 4, 4, 1]
    assert store.stats()["rows"] == 21
    assert tracker.stats().lifecycles_dropped == 0


def test_a_round_of_writing_ends_in_time_however_much_waits(tmp_path, monkeypatch):
    """Lives may come faster than the store takes them: a round stops after WRITE_ROUND_S,
    so that the housekeeper's other work (scan, reconcile, counters) goes on."""
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    hk = housekeeper(tracker, clock, store, behind=False)
    now = [0.0]

    def monotonic() -> float:
        now[0] += 0.2  # each chunk takes a fifth of a second
        return now[0]

    monkeypatch.setattr("tracer.daemon.time.monotonic", monotonic)
    rounds = [hk.flush_timeline() for _ in range(3)]
    assert 4 <= rounds[0] < 21 and sum(rounds) == 21, rounds
    assert hk.timeline_written == 21 and store.stats()["rows"] == 21
    assert housekeeper(*churned(3), SqliteStore(tmp_path / "u.db", 86400, 1 << 30),
                       behind=False).flush_timeline(final=True) == 21, "the last one writes everything"


def test_the_last_flush_writes_everything_however_far_behind(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    assert housekeeper(tracker, clock, store, behind=True).flush_timeline(final=True) == 21


def test_lives_the_store_refuses_are_counted_and_the_rest_written(tmp_path):
    tracker, clock = churned(3)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    store._conn.execute("PRAGMA query_only = 1")  # as a disk gone read-only would refuse them
    hk = housekeeper(tracker, clock, store, behind=False)
    assert hk.flush_timeline() == 0
    assert hk.timeline_not_written == 21
    store._conn.execute("PRAGMA query_only = 0")
    churned_again, _ = churned(1)
    hk.tracker = churned_again
    assert hk.flush_timeline() == 7 and hk.timeline_not_written == 21


def test_a_busy_reader_puts_the_timeline_off_until_half_the_backlog_waits(tmp_path):
    # 22 ended lives may wait here (half: 11); three laps leave 21 waiting, one lap 7.
    tracker, clock = churned(3, pending_max=22)
    store = SqliteStore(tmp_path / "t.db", 86400, 1 << 30)
    hk = housekeeper(tracker, clock, store, behind=False)
    hk.BUSY_EVENTS_PER_S = 10
    assert hk.flush_timeline() == 21  # the first round has no rate yet
    for laps, written in ((3, 21), (1, 0)):
        hk.tracker, _ = churned(laps, pending_max=22)
        hk._rate_events = hk.tracker.events - 1000  # a thousand events in the second since
        clock.advance(1.0)
        assert hk.flush_timeline() == written  # over half waiting: all; else busy: none
        assert hk.events_per_s == 1000
