"""Replaying a recording: batches, exact counts, errors that point at the line."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tracer.core import record
from tracer.core.states import EventKind, Role, TcpState
from tracer.core.tracker import Tracker
from tests.unit.tracker_state import tracker_state
from tracer.sources.replay import LifeAssembler, ReplayError, ReplaySource, read_events

S = TcpState
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LOOPBACK_3 = FIXTURES / "loopback-3-client-close.jsonl"
STATE = EventKind.STATE.value


@pytest.fixture
def events(event):
    return [
        event(1, S.CLOSE, S.SYN_SENT, ts_ns=10, dport=80, service_port=80, role=Role.ACTIVE),
        event(1, S.SYN_SENT, S.ESTABLISHED, ts_ns=20, sport=40000, dport=80, service_port=80,
              role=Role.ACTIVE),
        event(2, S.CLOSE, S.SYN_SENT, ts_ns=30, dport=443, service_port=443, role=Role.ACTIVE),
        event(2, S.SYN_SENT, S.CLOSE, ts_ns=40, sport=40001, dport=443, service_port=443,
              role=Role.ACTIVE),
        event(1, 0, 0, kind=EventKind.RESET_RX, ts_ns=50, sport=40000, dport=80, service_port=80,
              role=Role.ACTIVE),
        event(1, S.ESTABLISHED, S.CLOSE, ts_ns=60, sport=40000, dport=80, service_port=80,
              role=Role.ACTIVE),
    ]


@pytest.fixture
def replay():
    """Opens ReplaySources and closes them whatever the test's outcome."""
    opened: list[ReplaySource] = []

    def open_source(path: Path, **kwargs) -> ReplaySource:
        source = ReplaySource(path, **kwargs)
        opened.append(source)
        return source

    yield open_source
    for source in opened:
        source.close()


def write_recording(path: Path, lines: list) -> Path:
    text = [json.dumps({"meta": {"recorded_by": "test", "how": "written by the test"}})]
    for line in lines:
        text.append(line if isinstance(line, str) else json.dumps(record.to_json(line)))
    path.write_text("\n".join(text) + "\n")
    return path


def read_all(source: ReplaySource) -> list[list]:
    batches = []
    while (batch := source.read()) is not None:
        batches.append(batch)
    return batches


def test_yields_events_in_batches(replay, tmp_path, events):
    source = replay(write_recording(tmp_path / "r.jsonl", events), batch_size=4)
    batches = read_all(source)
    assert [len(b) for b in batches] == [4, 2]
    assert [ev for b in batches for ev in b] == events
    assert source.lost() == {}


def test_exhausted_source_keeps_returning_none(replay, tmp_path, events):
    source = replay(write_recording(tmp_path / "r.jsonl", events))
    assert source.read() == events
    assert source.read() is None
    assert source.read() is None


def test_meta_and_blank_lines_are_skipped(replay, tmp_path, events):
    path = write_recording(tmp_path / "r.jsonl", [events[0], "", "   ", '{"meta": {"note": "x"}}', events[1]])
    source = replay(path)
    assert read_all(source) == [events[:2]]


def test_counts_transitions_by_service_port_kind_and_states(replay, tmp_path, events):
    source = replay(write_recording(tmp_path / "r.jsonl", events), batch_size=2)
    read_all(source)
    assert source.transition_counts() == {
        (80, STATE, S.CLOSE, S.SYN_SENT): 1,
        (80, STATE, S.SYN_SENT, S.ESTABLISHED): 1,
        (443, STATE, S.CLOSE, S.SYN_SENT): 1,
        (443, STATE, S.SYN_SENT, S.CLOSE): 1,
        (80, EventKind.RESET_RX.value, 0, 0): 1,
        (80, STATE, S.ESTABLISHED, S.CLOSE): 1,
    }


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not JSON"),
    ('{"ts_ns": 1, "sk": "0x1", "kind": "state", "saddr": "127.0.0.1", "daddr": "127.0.0.1", '
     '"sport": 1, "dport": 70000, "service_port": 80}', "'dport' is not a port"),
    (json.dumps(["an", "array"]), "JSON object"),
])
def test_bad_line_raises_after_the_events_before_it(replay, tmp_path, events, bad, why):
    path = write_recording(tmp_path / "r.jsonl", events[:3] + [bad] + events[3:])
    source = replay(path)
    assert source.read() == events[:3]
    with pytest.raises(ReplayError, match=rf"^{re.escape(str(path))}:5: .*{why}"):
        source.read()
    # The error sticks; the events after it are never handed out.
    with pytest.raises(ReplayError, match=rf"^{re.escape(str(path))}:5: "):
        source.read()
    assert sum(source.transition_counts().values()) == 3


def test_bad_line_at_a_batch_boundary(replay, tmp_path, events):
    path = write_recording(tmp_path / "r.jsonl", events[:2] + ['{"sk": "0x1"}'])
    source = replay(path, batch_size=2)
    assert source.read() == events[:2]
    with pytest.raises(ReplayError, match=rf"^{re.escape(str(path))}:4: .*'ts_ns'"):
        source.read()
    # Sticky here too: the recording did not end, it broke.
    with pytest.raises(ReplayError, match=rf"^{re.escape(str(path))}:4: "):
        source.read()


def test_missing_file_is_a_replay_error(tmp_path):
    with pytest.raises(ReplayError, match="cannot open recording .*nope.jsonl"):
        ReplaySource(tmp_path / "nope.jsonl")


# -- the loopback fixture ------------------------------------------------------


def fixture_events(replay) -> list:
    source = replay(LOOPBACK_3, batch_size=7)
    events = [ev for batch in read_all(source) for ev in batch]
    return events


def test_fixture_says_how_it_was_made():
    meta = json.loads(LOOPBACK_3.read_text().splitlines()[0])["meta"]
    assert {"recorded_by", "how", "kernel", "note"} <= meta.keys()


def test_fixture_is_three_client_closed_connections(replay):
    events = fixture_events(replay)
    assert len(events) == 32
    ts = [ev[record.Field.TS] for ev in events]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert {ev[record.Field.SERVICE_PORT] for ev in events} == {20001}
    by_role = Counter(ev[record.Field.ROLE] for ev in events)
    assert by_role == {Role.ACTIVE: 15, Role.PASSIVE: 15, Role.LISTENER: 2}
    clients = {ev[record.Field.SPORT] for ev in events if ev[record.Field.ROLE] == Role.ACTIVE}
    assert clients == {0, 37176, 37192, 37202}
    # Each socket's transitions chain: every old state is the previous new state.
    last: dict[int, int] = {}
    for ev in events:
        sk, old, new = ev[record.Field.SK], ev[record.Field.OLD], ev[record.Field.NEW]
        assert last.get(sk, old) == old
        last[sk] = new
    assert set(last.values()) == {S.CLOSE}


def test_fixture_replayed_through_the_tracker_leaves_three_time_waits(replay):
    tracker = Tracker(timewait_ns=60 * 10**9, max_sockets=1000)
    source = replay(LOOPBACK_3, batch_size=5)
    for batch in read_all(source):
        tracker.apply_batch(batch)
    assert {k: n for k, n in tracker.snapshot().items() if n} == {(20001, S.TIME_WAIT): 3}
    assert tracker.table.sockets == {}
    assert [e.sk for e in tracker.tw.fifo] == [0xFFFF888000D39280, 0xFFFF888000D38940,
                                                0xFFFF888000D38000]


def test_fixture_transition_counts(replay):
    source = replay(LOOPBACK_3)
    read_all(source)
    counts = source.transition_counts()
    per_connection = [
        (S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1),
        (S.FIN_WAIT1, S.FIN_WAIT2), (S.FIN_WAIT2, S.CLOSE),
        (S.LISTEN, S.SYN_RECV), (S.SYN_RECV, S.ESTABLISHED), (S.ESTABLISHED, S.CLOSE_WAIT),
        (S.CLOSE_WAIT, S.LAST_ACK), (S.LAST_ACK, S.CLOSE),
    ]
    expected = Counter()
    for old, new in per_connection:
        expected[(20001, STATE, old, new)] += 3
    expected[(20001, STATE, S.CLOSE, S.LISTEN)] += 1
    expected[(20001, STATE, S.LISTEN, S.CLOSE)] += 1
    assert counts == dict(expected)
    assert sum(counts.values()) == 30 + 2


# -- the kernel's records ------------------------------------------------------


def read_all_records(source: ReplaySource) -> list[list]:
    batches = []
    while (batch := source.read_records()) is not None:
        batches.append(batch)
    return batches


def recorded(path: Path) -> list:
    with open(path, encoding="utf-8") as stream:
        return list(read_events(stream))


def per_socket(events: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for ev in events:
        out.setdefault(ev[record.Field.SK], []).append(ev)
    return out


# What a record holds once, the latest value: the owner, the ports, the flags.
LATEST = (record.Field.PID, record.Field.SPORT, record.Field.DPORT, record.Field.FLAGS, record.Field.COMM)


def without_latest(ev: tuple) -> tuple:
    return tuple(v for i, v in enumerate(ev) if i not in LATEST)


@pytest.mark.parametrize("batch_size", [4096, 7, 5, 1])
def test_the_records_hold_the_recordings_events_in_order_per_socket(replay, batch_size):
    records = [r for b in read_all_records(replay(LOOPBACK_3, batch_size=batch_size)) for r in b]
    events = recorded(LOOPBACK_3)
    got = per_socket([ev for rec in records for ev in record.events_of(rec)])
    want = per_socket(events)
    assert got.keys() == want.keys()
    for sk, evs in want.items():
        assert [without_latest(ev) for ev in got[sk]] == [without_latest(ev) for ev in evs], hex(sk)
        # The record keeps the socket's latest owner, ports and flags, as the program does.
        assert {tuple(ev[i] for i in LATEST) for ev in got[sk]} <= {tuple(ev[i] for i in LATEST) for ev in evs}
    assert sum(len(b) for b in per_socket(events).values()) == 32


def test_each_socket_of_the_fixture_is_one_life_sent_at_its_close(replay):
    (batch,) = read_all_records(replay(LOOPBACK_3))
    assert len(batch) == 7 and all(rec[record.MORE_AT] for rec in batch)
    sent = [record.events_of(rec)[-1] for rec in batch]
    assert [ev[record.Field.NEW] for ev in sent] == [S.CLOSE] * 7
    assert [ev[record.Field.TS] for ev in sent] == sorted(ev[record.Field.TS] for ev in sent)
    client = batch[0]
    assert client[record.Field.SPORT] == 37176, "the port connect() bound, as the program fills it in"


@pytest.mark.parametrize("batch_size", [4096, 5])
def test_the_tracker_after_the_records_is_the_tracker_after_the_events(replay, batch_size):
    by_records = Tracker(60 * 10**9, 1000, keep_lifecycles=True)
    source = replay(LOOPBACK_3, batch_size=batch_size)
    while (batch := source.read_records()) is not None:
        by_records.apply_records(batch)
    by_events = Tracker(60 * 10**9, 1000, keep_lifecycles=True)
    for ev in recorded(LOOPBACK_3):
        by_events.apply(ev)
    assert tracker_state(by_records, lives_in_order=False) == tracker_state(by_events, lives_in_order=False)


def test_the_fixture_as_records_leaves_three_time_waits(replay):
    tracker = Tracker(timewait_ns=60 * 10**9, max_sockets=1000)
    for batch in read_all_records(replay(LOOPBACK_3)):
        tracker.apply_records(batch)
    assert {k: n for k, n in tracker.snapshot().items() if n} == {(20001, S.TIME_WAIT): 3}
    assert tracker.table.sockets == {}
    assert [e.sk for e in tracker.tw.fifo] == [0xFFFF888000D39280, 0xFFFF888000D38940,
                                                0xFFFF888000D38000]
    assert tracker.events == 32


def shapes(records: list) -> list[tuple]:
    """(socket, transitions) of each record: (kind, new state) after the first."""
    return [(rec[record.Field.SK], [(ev[record.Field.KIND], ev[record.Field.NEW]) for ev in record.events_of(rec)])
            for rec in records]


def client(event, sk: int, *steps, t0: int = 0) -> list:
    """A client socket's events: (old, new) transitions, or "rst" for a reset received."""
    evs = []
    for i, step in enumerate(steps):
        if step == "rst":
            evs.append(event(sk, 0, 0, kind=EventKind.RESET_RX, ts_ns=t0 + i, sport=40000, dport=80,
                             service_port=80, role=Role.ACTIVE))
        else:
            evs.append(event(sk, *step, ts_ns=t0 + i, sport=40000, dport=80, service_port=80, role=Role.ACTIVE))
    return evs


def test_a_life_is_assembled_as_the_program_assembles_it(event):
    st = STATE
    rst = EventKind.RESET_RX.value
    cases = [
        # A socket not seen opening: each transition on its own.
        (client(event, 1, (S.ESTABLISHED, S.FIN_WAIT1), (S.FIN_WAIT1, S.FIN_WAIT2)),
         [(1, [(st, S.FIN_WAIT1)]), (1, [(st, S.FIN_WAIT2)])], 0),
        # A reset goes in the life; the close sends it.
        (client(event, 2, (S.CLOSE, S.SYN_SENT), "rst", (S.SYN_SENT, S.CLOSE)),
         [(2, [(st, S.SYN_SENT), (rst, 0), (st, S.CLOSE)])], 0),
        # Born again at the address of a life still open: that one goes out as it is.
        (client(event, 3, (S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.CLOSE, S.SYN_SENT)),
         [(3, [(st, S.SYN_SENT), (st, S.ESTABLISHED)])], 1),
    ]
    for events, sent, still_open in cases:
        lives = LifeAssembler()
        records = [rec for ev in events for rec in lives.add(ev)]
        assert shapes(records) == sent
        assert len(lives) == still_open


def test_a_full_life_goes_out_and_the_socket_goes_on_one_transition_a_record(event):
    steps = [(S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED)] + ["rst"] * 7 + [(S.ESTABLISHED, S.CLOSE)]
    lives = LifeAssembler()
    records = [rec for ev in client(event, 9, *steps) for rec in lives.add(ev)]
    assert [rec[record.MORE_AT] for rec in records] == [record.MORE, 0, 0]
    assert shapes(records)[1:] == [(9, [(EventKind.RESET_RX.value, 0)]), (9, [(STATE, S.CLOSE)])]
    assert len(lives) == 0


def test_lives_open_where_the_recordings_time_goes_back_are_handed_out_there(replay, tmp_path, event):
    """`watch --record` writes each batch it read in time order: where the time goes back,
    the next batch began, and the lives the first left open had been sent open."""
    first = client(event, 1, (S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), t0=100)
    earlier = client(event, 2, (S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.CLOSE), t0=50)
    later = client(event, 1, (S.ESTABLISHED, S.CLOSE), t0=200)
    source = replay(write_recording(tmp_path / "r.jsonl", first + earlier + later))
    batches = read_all_records(source)
    assert [shapes(b) for b in batches] == [
        [(1, [(STATE, S.SYN_SENT), (STATE, S.ESTABLISHED)])],
        [(2, [(STATE, S.SYN_SENT), (STATE, S.CLOSE)]), (1, [(STATE, S.CLOSE)])],
    ]


def test_a_bad_line_comes_after_the_lives_before_it(replay, tmp_path, event):
    opened = client(event, 1, (S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED))
    path = write_recording(tmp_path / "r.jsonl", opened + ['{"sk": "0x1"}'])
    source = replay(path)
    assert shapes(source.read_records()) == [(1, [(STATE, S.SYN_SENT), (STATE, S.ESTABLISHED)])]
    for _ in range(2):
        with pytest.raises(ReplayError, match=rf"^{re.escape(str(path))}:4: .*'ts_ns'"):
            source.read_records()


def test_a_replay_has_nothing_to_sweep_and_no_backlog(replay):
    source = replay(LOOPBACK_3)
    assert source.sweep() == [] and source.backlog() == 0.0
    source.seed_listeners({20001: (1, "x")})
    assert len(read_all_records(source)) == 1
    assert source.read_records() is None
