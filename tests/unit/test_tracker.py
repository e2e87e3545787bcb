"""The socket table and its TIME_WAIT model, fed the transitions the tracepoint reports."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tracer.core.states import EventKind, Role, TcpState
from tracer.core.tracker import Tracker

S = TcpState
TW_NS = 60_000_000_000
PORT = 20001
CLIENT, SERVER = 0xFFFF888000D39280, 0xFFFF888000D3DC80
US = 1_000

# One loopback connection, client closes first, in the order DESIGN.md shows
# (the live kernel interleaves the two sides like this).
# (sk, role, old, new, sport, dport)
CLIENT_CLOSES_FIRST = [
    (CLIENT, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, PORT),
    (CLIENT, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 37176, PORT),
    (SERVER, Role.PASSIVE, S.LISTEN, S.SYN_RECV, PORT, 37176),
    (SERVER, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED, PORT, 37176),
    (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, 37176, PORT),
    (SERVER, Role.PASSIVE, S.ESTABLISHED, S.CLOSE_WAIT, PORT, 37176),
    (SERVER, Role.PASSIVE, S.CLOSE_WAIT, S.LAST_ACK, PORT, 37176),
    (CLIENT, Role.ACTIVE, S.FIN_WAIT1, S.FIN_WAIT2, 37176, PORT),
    (CLIENT, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 37176, PORT),
    (SERVER, Role.PASSIVE, S.LAST_ACK, S.CLOSE, PORT, 37176),
]

# The server closes first: it is the one left in TIME_WAIT.
SERVER_CLOSES_FIRST = [
    (CLIENT, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, PORT),
    (CLIENT, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 37176, PORT),
    (SERVER, Role.PASSIVE, S.LISTEN, S.SYN_RECV, PORT, 37176),
    (SERVER, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED, PORT, 37176),
    (SERVER, Role.PASSIVE, S.ESTABLISHED, S.FIN_WAIT1, PORT, 37176),
    (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.CLOSE_WAIT, 37176, PORT),
    (CLIENT, Role.ACTIVE, S.CLOSE_WAIT, S.LAST_ACK, 37176, PORT),
    (SERVER, Role.PASSIVE, S.FIN_WAIT1, S.FIN_WAIT2, PORT, 37176),
    (SERVER, Role.PASSIVE, S.FIN_WAIT2, S.CLOSE, PORT, 37176),
    (CLIENT, Role.ACTIVE, S.LAST_ACK, S.CLOSE, 37176, PORT),
]


def service_port(role: Role, sport: int, dport: int) -> int:
    return dport if role == Role.ACTIVE else sport


def nonzero(tracker: Tracker) -> dict[tuple[int, int], int]:
    return {key: n for key, n in tracker.snapshot().items() if n}


def live_timewait(tracker: Tracker) -> list:
    return [e for e in tracker.tw.fifo if e.state == S.TIME_WAIT]


def assert_consistent(tracker: Tracker) -> None:
    """The counts are exactly what the table holds: no negative, none lost, none extra."""
    counts = tracker.snapshot()
    assert all(n >= 0 for n in counts.values()), counts
    expected = Counter((e.port, e.state) for e in tracker.table.sockets.values())
    expected.update((e.port, S.TIME_WAIT.value) for e in live_timewait(tracker))
    assert {k: n for k, n in counts.items() if n} == dict(expected)
    assert sum(counts.values()) == len(tracker.table.sockets) + len(live_timewait(tracker))
    assert tracker.stats().timewait == len(live_timewait(tracker))


@pytest.fixture
def play(event):
    """Applies (sk, role, old, new, sport, dport) rows 1 us apart; returns what apply() returned."""

    def play(tracker: Tracker, rows, start_ns: int = 1_000_000, step_ns: int = US) -> list[int]:
        spent = []
        for i, (sk, role, old, new, sport, dport) in enumerate(rows):
            spent.append(tracker.apply(event(
                sk, old, new, ts_ns=start_ns + i * step_ns, sport=sport, dport=dport,
                service_port=service_port(role, sport, dport), role=role)))
            assert_consistent(tracker)
        return spent

    return play


def test_client_closes_first_leaves_one_time_wait(play):
    tracker = Tracker(TW_NS, 1000)
    spent = play(tracker, CLIENT_CLOSES_FIRST, step_ns=US)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    assert tracker.table.sockets == {}
    assert [e.sk for e in live_timewait(tracker)] == [CLIENT]
    stats = tracker.stats()
    assert (stats.events, stats.sockets, stats.timewait, stats.timewait_entered) == (10, 0, 1, 1)
    # Each socket's first event has no previous state to time; the others are
    # the gap since that socket's previous event.
    assert spent == [-1, 1 * US, -1, 1 * US, 3 * US, 2 * US, 1 * US, 3 * US, 1 * US, 3 * US]


def test_counts_follow_each_step(play):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST[:4])
    assert nonzero(tracker) == {(PORT, S.ESTABLISHED): 2}
    play(tracker, CLIENT_CLOSES_FIRST[4:7])
    assert nonzero(tracker) == {(PORT, S.FIN_WAIT1): 1, (PORT, S.LAST_ACK): 1}


def test_ports_in_use_keep_their_series_at_zero(play):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST)
    counts = tracker.snapshot()
    assert counts[(PORT, S.ESTABLISHED)] == 0
    assert counts[(PORT, S.LAST_ACK)] == 0


@pytest.mark.parametrize("after_ns, left", [
    (0, 1),
    (TW_NS - 1, 1),
    (TW_NS, 0),
    (TW_NS + 1, 0),
])
def test_time_wait_expires_after_timewait_ns(play, after_ns, left):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST, start_ns=1_000_000, step_ns=US)
    closed_ns = 1_000_000 + 8 * US  # FIN_WAIT2->CLOSE, the 9th row
    tracker.expire(closed_ns + after_ns)
    assert nonzero(tracker) == ({(PORT, S.TIME_WAIT): 1} if left else {})
    assert tracker.stats().timewait == left
    assert_consistent(tracker)


def test_expiry_is_oldest_first(play):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, [(1, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40000, 80)], start_ns=0)
    play(tracker, [(2, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40001, 443)], start_ns=10)
    tracker.expire(TW_NS + 5)
    assert nonzero(tracker) == {(443, S.TIME_WAIT): 1}
    tracker.expire(TW_NS + 10)
    assert nonzero(tracker) == {}


@pytest.mark.parametrize("kind", [EventKind.RESET_RX, EventKind.RESET_TX])
def test_reset_before_close_means_no_time_wait(play, event, kind):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST[:8])  # client now in FIN_WAIT2
    spent = tracker.apply(event(CLIENT, 0, 0, kind=kind, ts_ns=2_000_000, sport=37176, dport=PORT,
                                service_port=PORT, role=Role.ACTIVE))
    assert spent == -1
    assert nonzero(tracker) == {(PORT, S.FIN_WAIT2): 1, (PORT, S.LAST_ACK): 1}
    play(tracker, CLIENT_CLOSES_FIRST[8:], start_ns=2_000_001)
    assert nonzero(tracker) == {}
    stats = tracker.stats()
    assert (stats.timewait, stats.timewait_entered, stats.timewait_cancelled_by_reset) == (0, 0, 0)


def test_reset_sent_right_after_close_cancels_time_wait(play, event):
    # tcp_close() with a negative linger2 sets CLOSE, then sends the abortive reset.
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST[:9])
    assert nonzero(tracker)[(PORT, S.TIME_WAIT)] == 1
    tracker.apply(event(CLIENT, S.CLOSE, S.CLOSE, kind=EventKind.RESET_TX, ts_ns=2_000_000,
                        sport=37176, dport=PORT, service_port=PORT, role=Role.ACTIVE))
    assert_consistent(tracker)
    assert nonzero(tracker) == {(PORT, S.LAST_ACK): 1}
    stats = tracker.stats()
    assert (stats.timewait, stats.timewait_entered, stats.timewait_cancelled_by_reset) == (0, 1, 1)
    # The cancelled entry must not be taken off the counts a second time at expiry.
    tracker.expire(10 * TW_NS)
    assert_consistent(tracker)
    assert nonzero(tracker) == {(PORT, S.LAST_ACK): 1}


def test_reset_for_an_unknown_socket_changes_nothing(event):
    tracker = Tracker(TW_NS, 1000)
    tracker.apply(event(0x99, 0, 0, kind=EventKind.RESET_RX, service_port=PORT))
    assert nonzero(tracker) == {}
    assert tracker.stats().timewait_cancelled_by_reset == 0
    assert tracker.stats().events == 1


def test_socket_address_reused_during_time_wait(play, event):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST, start_ns=0)
    # The full socket's memory is freed; a new connection gets the same address.
    reuse = [
        (CLIENT, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 443),
        (CLIENT, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 40000, 443),
    ]
    play(tracker, reuse, start_ns=1_000_000)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1, (443, S.ESTABLISHED): 1}
    # A reset of the new connection is the new connection's, not the old TIME_WAIT's.
    tracker.apply(event(CLIENT, 0, 0, kind=EventKind.RESET_RX, ts_ns=1_500_000, sport=40000,
                        dport=443, service_port=443, role=Role.ACTIVE))
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1, (443, S.ESTABLISHED): 1}
    assert tracker.stats().timewait_cancelled_by_reset == 0
    play(tracker, [(CLIENT, Role.ACTIVE, S.ESTABLISHED, S.CLOSE, 40000, 443)], start_ns=2_000_000)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    tracker.expire(TW_NS + 8 * US)
    assert nonzero(tracker) == {}
    assert_consistent(tracker)


def _again(client_port: int) -> list:
    """The same connection once more from the same socket address, from ``client_port``."""
    def port(p: int) -> int:
        return client_port if p == 37176 else p
    return [(CLIENT if sk == CLIENT else SERVER + 0x40, role, old, new, port(sport), port(dport))
            for sk, role, old, new, sport, dport in CLIENT_CLOSES_FIRST]


def test_same_connection_again_takes_over_its_time_wait(play):
    """tcp_tw_reuse: a connect() of the same four-tuple replaces the TIME_WAIT socket."""
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST, start_ns=0)
    play(tracker, _again(37176)[:2], start_ns=1_000_000)
    assert nonzero(tracker) == {(PORT, S.ESTABLISHED): 1}
    assert tracker.stats().timewait_reused == 1
    play(tracker, _again(37176)[2:], start_ns=1_000_100)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    assert_consistent(tracker)


def test_time_waits_taken_over_do_not_pile_up_until_they_would_have_expired(event):
    """Churn that reuses its ports ends each TIME_WAIT long before its minute is up;
    the ended ones must not stay in memory for that minute."""
    tracker = Tracker(TW_NS, 1000)
    for i in range(10_000):
        tracker.apply_batch([
            event(sk, old, new, ts_ns=i * 1_000_000 + j * US, sport=sport, dport=dport,
                  service_port=service_port(role, sport, dport), role=role)
            for j, (sk, role, old, new, sport, dport) in enumerate(_again(37176))])
    assert tracker.stats().timewait_reused == 9_999
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    assert len(tracker.tw.fifo) <= 2 + 4096
    tracker.expire(10_000 * 1_000_000 + TW_NS)
    assert nonzero(tracker) == {}
    assert_consistent(tracker)


def test_reused_address_closing_again_gives_two_time_waits(play):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, CLIENT_CLOSES_FIRST, start_ns=0)
    play(tracker, _again(37180), start_ns=1_000_000)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 2}
    tracker.expire(8 * US + TW_NS)  # the first one only
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    tracker.expire(1_000_000 + 8 * US + TW_NS)
    assert nonzero(tracker) == {}
    assert_consistent(tracker)


def test_socket_first_seen_mid_life_is_tracked(play):
    tracker = Tracker(TW_NS, 1000)
    spent = play(tracker, [
        (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, 37176, PORT),
        (CLIENT, Role.ACTIVE, S.FIN_WAIT1, S.FIN_WAIT2, 37176, PORT),
    ], start_ns=0, step_ns=5 * US)
    assert spent == [-1, 5 * US]
    assert nonzero(tracker) == {(PORT, S.FIN_WAIT2): 1}
    play(tracker, [(CLIENT, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 37176, PORT)], start_ns=20 * US)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}


@pytest.mark.parametrize("old, timewait", [
    (S.FIN_WAIT1, 1),
    (S.FIN_WAIT2, 1),
    (S.CLOSING, 1),
    (S.ESTABLISHED, 0),
    (S.SYN_SENT, 0),
    (S.CLOSE_WAIT, 0),
    (S.LAST_ACK, 0),
])
def test_first_event_is_a_close(play, old, timewait):
    tracker = Tracker(TW_NS, 1000)
    assert play(tracker, [(CLIENT, Role.ACTIVE, old, S.CLOSE, 37176, PORT)]) == [-1]
    assert tracker.table.sockets == {}
    assert nonzero(tracker) == ({(PORT, S.TIME_WAIT): 1} if timewait else {})


def test_eviction_when_the_table_is_full(play):
    tracker = Tracker(TW_NS, 2)
    play(tracker, [
        (1, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 80),
        (2, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 443),
        (2, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 40002, 443),
        (3, Role.PASSIVE, S.LISTEN, S.SYN_RECV, 8080, 50000),
    ])
    assert tracker.stats().evicted == 1
    assert sorted(tracker.table.sockets) == [2, 3]  # the oldest went
    assert nonzero(tracker) == {(443, S.ESTABLISHED): 1, (8080, S.SYN_RECV): 1}
    # An event for the evicted socket starts it again, mid-life.
    play(tracker, [(1, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 40001, 80)], start_ns=2_000_000)
    assert tracker.stats().evicted == 2
    assert nonzero(tracker) == {(80, S.ESTABLISHED): 1, (8080, S.SYN_RECV): 1}


def test_time_wait_eviction_when_full(play):
    tracker = Tracker(TW_NS, 2)
    play(tracker, [(sk, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40000 + sk, 80) for sk in (1, 2, 3)])
    assert tracker.stats().evicted == 1
    assert [e.sk for e in live_timewait(tracker)] == [2, 3]
    assert nonzero(tracker) == {(80, S.TIME_WAIT): 2}


def test_cancelled_time_wait_does_not_take_a_slot(play, event):
    """max_sockets bounds the TIME_WAIT sockets, so one cancelled by a reset frees its slot."""
    tracker = Tracker(TW_NS, 2)
    play(tracker, [(sk, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40000 + sk, 80) for sk in (1, 2)])
    tracker.apply(event(2, S.CLOSE, S.CLOSE, kind=EventKind.RESET_TX, ts_ns=2_000_000,
                        sport=40002, dport=80, service_port=80, role=Role.ACTIVE))
    assert nonzero(tracker) == {(80, S.TIME_WAIT): 1}
    play(tracker, [(3, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40003, 80)], start_ns=3_000_000)
    assert [e.sk for e in live_timewait(tracker)] == [1, 3]
    assert nonzero(tracker) == {(80, S.TIME_WAIT): 2}
    assert tracker.stats().evicted == 0


def test_server_closes_first_time_wait_is_the_servers(play):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, SERVER_CLOSES_FIRST)
    assert nonzero(tracker) == {(PORT, S.TIME_WAIT): 1}
    (tw,) = live_timewait(tracker)
    assert (tw.sk, tw.role, tw.port, tw.sport) == (SERVER, Role.PASSIVE, PORT, PORT)


@pytest.mark.parametrize("rows, left", [
    pytest.param([
        (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, 37176, PORT),
        (CLIENT, Role.ACTIVE, S.FIN_WAIT1, S.CLOSING, 37176, PORT),
        (CLIENT, Role.ACTIVE, S.CLOSING, S.CLOSE, 37176, PORT),
    ], {(PORT, S.TIME_WAIT): 1}, id="simultaneous-close"),
    pytest.param([
        (CLIENT, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 37176, PORT),
        (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.CLOSE, 37176, PORT),
    ], {}, id="established-close"),
    pytest.param([
        (CLIENT, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, PORT),
        (CLIENT, Role.ACTIVE, S.SYN_SENT, S.CLOSE, 37176, PORT),
    ], {}, id="refused-connect"),
    pytest.param([
        (CLIENT, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, 37176, PORT),
        (CLIENT, Role.ACTIVE, S.FIN_WAIT1, S.CLOSE, 37176, PORT),
    ], {(PORT, S.TIME_WAIT): 1}, id="fin-wait1-close"),
    pytest.param([
        (SERVER, Role.LISTENER, S.CLOSE, S.LISTEN, PORT, 0),
        (SERVER, Role.LISTENER, S.LISTEN, S.CLOSE, PORT, 0),
    ], {}, id="listener"),
])
def test_which_closes_enter_time_wait(play, rows, left):
    tracker = Tracker(TW_NS, 1000)
    play(tracker, rows)
    assert nonzero(tracker) == left
    assert tracker.table.sockets == {}


@pytest.mark.parametrize("timewait_ns, max_sockets", [(0, 10), (-1, 10), (10, 0)])
def test_rejects_nonsense_limits(timewait_ns, max_sockets):
    with pytest.raises(ValueError):
        Tracker(timewait_ns, max_sockets)


# Transitions the tracepoint can report, from each state; None = a new socket.
NEXT = {
    None: [S.SYN_SENT, S.LISTEN, S.SYN_RECV, S.FIN_WAIT1, S.CLOSE_WAIT, S.CLOSE],
    S.SYN_SENT: [S.ESTABLISHED, S.CLOSE],
    S.SYN_RECV: [S.ESTABLISHED, S.CLOSE],
    S.ESTABLISHED: [S.FIN_WAIT1, S.CLOSE_WAIT, S.CLOSE],
    S.FIN_WAIT1: [S.FIN_WAIT2, S.CLOSING, S.CLOSE],
    S.FIN_WAIT2: [S.CLOSE],
    S.CLOSING: [S.CLOSE],
    S.CLOSE_WAIT: [S.LAST_ACK, S.CLOSE],
    S.LAST_ACK: [S.CLOSE],
    S.LISTEN: [S.CLOSE],
}
FIRST_OLD = {S.SYN_SENT: S.CLOSE, S.LISTEN: S.CLOSE, S.SYN_RECV: S.LISTEN,
             S.FIN_WAIT1: S.ESTABLISHED, S.CLOSE_WAIT: S.ESTABLISHED, S.CLOSE: S.FIN_WAIT2}


@pytest.mark.parametrize("seed", range(40))
def test_random_valid_sequences_keep_counts_consistent(event, seed):
    rng = random.Random(seed)
    tracker = Tracker(timewait_ns=rng.choice([50, 500, 10**9]), max_sockets=rng.choice([2, 3, 1000]))
    state: dict[int, TcpState | None] = {sk: None for sk in range(5)}
    ports = {sk: rng.choice([80, 443, PORT]) for sk in state}
    now = 0
    for _ in range(400):
        now += rng.randint(1, 20)
        sk = rng.choice(list(state))
        if rng.random() < 0.08:
            kind = rng.choice([EventKind.RESET_RX, EventKind.RESET_TX])
            tracker.apply(event(sk, 0, 0, kind=kind, ts_ns=now, service_port=ports[sk]))
        elif rng.random() < 0.1:
            tracker.expire(now)
        else:
            old = state[sk]
            new = rng.choice(NEXT[old])
            if old is None:
                old = FIRST_OLD[new]
                ports[sk] = rng.choice([80, 443, PORT])
            tracker.apply(event(sk, old, new, ts_ns=now, service_port=ports[sk]))
            state[sk] = None if new == S.CLOSE else new
        assert_consistent(tracker)
    assert len(tracker.table.sockets) <= tracker.max_sockets
    assert len(live_timewait(tracker)) <= tracker.max_sockets
    assert tracker.stats().events == tracker.events
    tracker.expire(now + tracker.timewait_ns)
    assert live_timewait(tracker) == []
    assert_consistent(tracker)
