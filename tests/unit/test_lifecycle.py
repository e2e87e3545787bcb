"""Socket lives for the timeline: what the tracker hands the store, and when."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.core.clock import FakeClock
from tracer.core.lifecycle import Lifecycle, RawLife
from tracer.core.record import AF_INET
from tracer.core.states import STATE_NAMES, Role
from tracer.core.tracker import Tracker
from tracer.sources.replay import ReplaySource

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
TW_NS = 60 * 10**9
CLIENT = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
SERVER = ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"]


def replayed() -> tuple[Tracker, int]:
    tracker = Tracker(TW_NS, 1000, keep_lifecycles=True)
    source = ReplaySource(FIXTURE)
    last = 0
    while (batch := source.read()) is not None:
        tracker.apply_batch(batch)
        last = batch[-1][0]
    return tracker, last


def by_role(records: list[Lifecycle]) -> dict[str, list[Lifecycle]]:
    out: dict[str, list[Lifecycle]] = {}
    for r in records:
        out.setdefault(r.role, []).append(r)
    return out


def test_three_connections_give_three_lives_per_role_in_the_kernels_order():
    tracker, _ = replayed()
    clock = FakeClock()
    roles = by_role(tracker.drain_lifecycles(clock.wall))
    assert sorted(roles) == ["active", "listener", "passive"]
    assert [[s.state for s in r.states] for r in roles["active"]] == [CLIENT] * 3
    assert [[s.state for s in r.states] for r in roles["passive"]] == [SERVER] * 3
    assert all(r.open for r in roles["active"]), "in TIME_WAIT: still alive"
    assert not any(r.open for r in roles["passive"] + roles["listener"])
    for r in roles["active"] + roles["passive"]:
        spans = r.states
        assert all(a.until == b.since for a, b in zip(spans, spans[1:])), "spans follow each other"
        assert (spans[-1].until is None) == r.open
        assert (r.laddr, r.raddr, r.service_port, r.comm) == ("127.0.0.1", "127.0.0.1", 20001, "python3")
    assert len({r.id for r in roles["active"] + roles["passive"] + roles["listener"]}) == 7
    assert tracker.drain_lifecycles(clock.wall) == [], "nothing changed since"


def test_timewait_end_closes_the_clients_life_60_seconds_later():
    tracker, last = replayed()
    clock = FakeClock()
    first = {r.id: r for r in tracker.drain_lifecycles(clock.wall)}
    tracker.expire(last + TW_NS + 1)
    closed = tracker.drain_lifecycles(clock.wall)
    assert len(closed) == 3 and not any(r.open for r in closed)
    for r in closed:
        tw = r.states[-1]
        assert tw.state == "TIME_WAIT" and round(tw.until - tw.since) == 60
        assert [s.state for s in r.states] == [s.state for s in first[r.id].states]


def test_ids_continue_from_where_the_store_left_off():
    tracker = Tracker(TW_NS, 1000, keep_lifecycles=True)
    tracker.next_uid = 5000
    source = ReplaySource(FIXTURE)
    while (batch := source.read()) is not None:
        tracker.apply_batch(batch)
    assert min(r.id for r in tracker.drain_lifecycles(FakeClock().wall)) == 5000


def test_without_a_store_no_life_is_kept():
    tracker = Tracker(TW_NS, 1000)
    source = ReplaySource(FIXTURE)
    while (batch := source.read()) is not None:
        tracker.apply_batch(batch)
    assert tracker.drain_lifecycles(FakeClock().wall) == []


def test_young_open_lives_wait_and_are_written_once_when_they_end_first():
    tracker, last = replayed()
    young = tracker.drain_raw(born_before_ns=0)  # every socket of the fixture is younger
    assert sorted(len(r[11]) // 2 for r in young) == [1, 4, 4, 4], "the ended: the listener, 3 servers"
    assert all(r[12] is not None for r in young)
    tracker.expire(last + TW_NS + 1)  # the clients' TIME_WAITs end before they were ever written
    clients = tracker.drain_raw(born_before_ns=0)
    assert len(clients) == 3 and all(r[12] is not None and len(r[11]) == 10 for r in clients)
    assert tracker.drain_raw() == []


def test_open_lives_are_written_once_they_are_old_enough():
    tracker, last = replayed()
    assert len(tracker.drain_raw(born_before_ns=0)) == 4
    assert tracker.drain_raw(born_before_ns=0) == [], "still young"
    aged = tracker.drain_raw(born_before_ns=last + 1)
    assert len(aged) == 3 and all(r[12] is None for r in aged), "the clients, open in TIME_WAIT"
    assert tracker.drain_raw(born_before_ns=last + 1) == [], "and only once"


def test_the_trackers_plain_tuples_are_raw_lives_field_by_field():
    """The tracker builds plain tuples; RawLife names their fields in the same order."""
    tracker, last = replayed()
    tracker.expire(last + TW_NS + 1)
    lives = [RawLife(*r) for r in tracker.drain_raw()]
    assert len(lives) == 7 and all(len(tuple(life)) == len(RawLife._fields) for life in lives)
    for life in lives:
        listener = life.role == Role.LISTENER
        assert life.family == AF_INET and life.saddr[:4] == bytes([127, 0, 0, 1])
        assert life.daddr == (bytes(16) if listener else life.saddr)
        assert life.service_port == 20001 and life.comm.rstrip(b"\0") == b"python3"
        states, since = life.history[0::2], life.history[1::2]
        assert all(s in STATE_NAMES for s in states) and list(since) == sorted(since)
        assert life.end_ns is not None and life.end_ns >= since[-1]
        if life.role == Role.ACTIVE:
            assert life.dport == 20001 and life.sport != 20001
        elif life.role == Role.PASSIVE:
            assert life.sport == 20001


@pytest.mark.parametrize("spans, marks", [(1, ()), (5, (0, 3, 9, 10**15 + 1)), (9, (7, 3, 9, 1, 1, 9, 2))])
def test_an_ended_life_packed_for_the_store_comes_back_the_same(spans, marks):
    from tracer.core.lifecycle import ended_with_how, pack_ended, unpack_ended

    history = tuple(x for i in range(spans) for x in ((i % 11) + 1, 10**15 + i * 1000))
    raw = (2**40 + 7, 4026531840, 10, bytes(range(16)), 40000, bytes(16), 443, 2, 443, 4242,
           b"nginx".ljust(16, b"\0"), history, 10**15 + spans * 1000, 1, marks)
    packed = pack_ended(raw)
    assert unpack_ended(packed) == raw
    assert len(packed) < 100 + 9 * spans + 8 * len(marks)
    assert unpack_ended(ended_with_how(packed, 6)) == (*raw[:13], 6, marks)  # a late reset's verdict
