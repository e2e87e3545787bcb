"""Stuck sockets: rules, the scan, counting crossings, and the kernel's table feeding the model."""

from __future__ import annotations

import pytest

from tracer.core.detector import WATCHED, Rules
from tracer.core.states import EventKind, Role, TcpState
from tracer.core.kernel_socket import KernelSocket
from tracer.core.tracker import Tracker

S = TcpState
SEC = 1_000_000_000
TW_NS = 60 * SEC
LO = bytes([127, 0, 0, 1]) + bytes(12)
NETNS = 4026532000


def conn(lport: int, rport: int) -> tuple:
    return (LO, lport, LO, rport)


def tracker(msl: float = 30, states=None, ports=None) -> Tracker:
    return Tracker(TW_NS, 1000, Rules.build(msl, states, ports))


def apply(t: Tracker, event, sk, role, old, new, sport, dport, ts_s: float) -> int:
    port = dport if role == Role.ACTIVE else sport
    return t.apply(event(sk, old, new, ts_ns=int(ts_s * SEC), sport=sport, dport=dport,
                         service_port=port, role=role))


def close_wait_socket(t: Tracker, event, sk=0x10, port=8080, peer=40000, at=0.0) -> None:
    apply(t, event, sk, Role.PASSIVE, S.LISTEN, S.SYN_RECV, port, peer, at)
    apply(t, event, sk, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED, port, peer, at)
    apply(t, event, sk, Role.PASSIVE, S.ESTABLISHED, S.CLOSE_WAIT, port, peer, at)


def client_timewait(t: Tracker, event, sk=0x20, port=8080, lport=40000, at=0.0) -> None:
    for old, new in [(S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1),
                     (S.FIN_WAIT1, S.FIN_WAIT2), (S.FIN_WAIT2, S.CLOSE)]:
        apply(t, event, sk, Role.ACTIVE, old, new, lport, port, at)


def stuck_states(report) -> list[tuple[int, str]]:
    return [(s.entry.port, s.rule.state.name) for s in report.stuck]


# -- rules --------------------------------------------------------------------------


def test_every_watched_state_defaults_to_2msl():
    rules = Rules.build(30)
    assert {S(s).name: r.threshold_s for s, r in rules.defaults.items()} == {s.name: 60.0 for s in WATCHED}
    assert rules.rule(80, S.LAST_ACK).describe().startswith("LAST_ACK longer than 2MSL (60 s):")


@pytest.mark.parametrize("port, state, seconds, scope", [
    (80, S.CLOSE_WAIT, 30, None),          # the state's own threshold
    (5432, S.CLOSE_WAIT, 600, 5432),       # overridden for one port
    (5432, S.LAST_ACK, 20, None),          # other states of that port keep the default (2MSL, msl 10)
    (80, S.FIN_WAIT2, 5, None),            # any spelling of a state name
])
def test_thresholds_by_state_and_port(port, state, seconds, scope):
    rules = Rules.build(10, {"CLOSE_WAIT": 30, "fin-wait-2": 5}, {5432: {"CLOSE_WAIT": 600}})
    rule = rules.rule(port, state)
    assert (rule.threshold_s, rule.port) == (seconds, scope)


def test_rules_refuse_states_that_are_never_stuck():
    with pytest.raises(ValueError, match="no stuck rule for ESTABLISHED"):
        Rules.build(30, {"ESTABLISHED": 5})
    with pytest.raises(ValueError, match="unknown TCP state"):
        Rules.build(30, {}, {80: {"NOPE": 5}})


# -- the scan -----------------------------------------------------------------------


def test_close_wait_flagged_only_past_its_threshold(event):
    t = tracker(states={"CLOSE_WAIT": 10})
    close_wait_socket(t, event, at=0)
    assert t.scan(10 * SEC).stuck == []  # exactly the threshold is not past it
    report = t.scan(int(10.5 * SEC))
    assert stuck_states(report) == [(8080, "CLOSE_WAIT")]
    assert report.stuck[0].age_ns == int(10.5 * SEC)
    assert report.counts[(8080, S.CLOSE_WAIT)] == 1
    # Every watched state of a port in use has a series, so panels are never blank.
    assert {state for (port, state) in report.counts if port == 8080} == {s.value for s in WATCHED}
    assert report.oldest_ns[(8080, S.CLOSE_WAIT)] == int(10.5 * SEC)
    assert t.stuck_totals() == {(8080, S.CLOSE_WAIT): 1}
    t.scan(20 * SEC)
    assert t.stuck_totals() == {(8080, S.CLOSE_WAIT): 1}, "one socket is counted once"


def test_port_override_keeps_a_socket_unflagged(event):
    t = tracker(states={"CLOSE_WAIT": 10}, ports={8080: {"CLOSE_WAIT": 100}})
    close_wait_socket(t, event, port=8080, at=0)
    close_wait_socket(t, event, sk=0x11, port=9090, at=0)
    assert stuck_states(t.scan(50 * SEC)) == [(9090, "CLOSE_WAIT")]


def test_a_socket_stuck_between_two_scans_is_still_counted(event):
    """It crossed the threshold and left before anybody scanned: the alert must still fire."""
    t = tracker(states={"CLOSE_WAIT": 10})
    close_wait_socket(t, event, at=0)
    apply(t, event, 0x10, Role.PASSIVE, S.CLOSE_WAIT, S.LAST_ACK, 8080, 40000, 11)
    assert t.stuck_totals() == {(8080, S.CLOSE_WAIT): 1}
    apply(t, event, 0x10, Role.PASSIVE, S.LAST_ACK, S.CLOSE, 8080, 40000, 11.001)
    assert t.stuck_totals() == {(8080, S.CLOSE_WAIT): 1}


def test_an_ordinary_timewait_is_never_stuck_with_default_msl(event):
    t = tracker()
    client_timewait(t, event, at=0)
    assert t.scan(int(60.9 * SEC)).stuck == []  # not ended yet by expire(): still 60 s old at most
    t.expire(61 * SEC)
    assert t.stuck_totals() == {}
    assert t.snapshot()[(8080, S.TIME_WAIT)] == 0


def test_timewait_beyond_a_short_msl_is_stuck(event):
    t = tracker(msl=10)
    client_timewait(t, event, at=0)
    assert stuck_states(t.scan(21 * SEC)) == [(8080, "TIME_WAIT")]


# -- the kernel's table -------------------------------------------------------------


def kernel_tw(c, left_s: float, netns: int = NETNS) -> KernelSocket:
    return KernelSocket(netns, 2, *c, S.TIME_WAIT, expires_ns=int(left_s * SEC))


def test_rearmed_timewait_outlives_2msl_and_is_flagged(event):
    """The peer's retransmitted FIN re-arms the timer: the kernel shows more time left than the model."""
    t = tracker()
    client_timewait(t, event, at=0)
    c = conn(40000, 8080)
    # At 24 s a FIN came again: at 26.5 s the kernel's timer has 57.5 s left.
    t.reconcile({c: kernel_tw(c, 57.5)}, 26.5 * SEC, 2 * SEC)
    assert t.stats().timewait_rearmed == 1
    t.expire(61 * SEC)
    assert t.snapshot()[(8080, S.TIME_WAIT)] == 1, "the kernel still holds it"
    report = t.scan(70 * SEC)
    assert stuck_states(report) == [(8080, "TIME_WAIT")]
    assert report.stuck[0].age_ns == 70 * SEC, "the age counts from the close, not from the last re-arm"
    assert report.stuck[0].entry.netns == NETNS
    # Re-armed again at 51 s; then the kernel lets it go at 111 s.
    t.reconcile({c: kernel_tw(c, 57.0)}, 54 * SEC, 2 * SEC)
    t.expire(100 * SEC)
    assert t.snapshot()[(8080, S.TIME_WAIT)] == 1
    t.expire(111 * SEC)
    assert t.snapshot()[(8080, S.TIME_WAIT)] == 0
    assert t.stuck_totals() == {(8080, S.TIME_WAIT): 1}


def test_a_rearm_is_judged_only_once_older_than_the_grace_and_what_the_reader_applied(event):
    """A connection that reused a TIME_WAIT's ports, closed in the kernel but not yet
    applied by a reader running behind, shows in the table as that TIME_WAIT re-armed."""
    t = tracker()
    client_timewait(t, event, at=0)
    c = conn(40000, 8080)
    # The kernel's TIME_WAIT for c began at 10 s (a newer connection's close).
    t.seen_until_ns = 9 * SEC  # the reader has applied up to 9 s
    t.reconcile({c: kernel_tw(c, 58)}, 12 * SEC, 2 * SEC)
    assert t.stats().timewait_rearmed == 0
    t.seen_until_ns = 11 * SEC
    t.reconcile({c: kernel_tw(c, 58)}, 12 * SEC, 2 * SEC)
    assert t.stats().timewait_rearmed == 0, "began 10 s: within the grace"
    t.seen_until_ns = 0  # not known: the dump's time is the horizon
    t.reconcile({c: kernel_tw(c, 57)}, 13 * SEC, 2 * SEC)
    assert t.stats().timewait_rearmed == 1


def test_timewaits_found_in_the_kernel_end_when_their_timers_do(event):
    """Each ends at its own kernel time, whatever the order they were found in; one
    ended early (a reset) is not ended again; one re-armed ends at its new time."""
    t = tracker()
    found = [conn(41000 + i, 8080) for i in range(4)]
    t.load_baseline([kernel_tw(c, left) for c, left in zip(found, [30, 10, 50, 20])], 0)
    tw = lambda: t.snapshot()[(8080, S.TIME_WAIT)]  # noqa: E731
    assert tw() == 4
    t.expire(9 * SEC)
    assert tw() == 4
    t.expire(10 * SEC)
    assert tw() == 3
    t.reconcile({c: kernel_tw(c, left) for c, left in [(found[0], 25), (found[2], 35), (found[3], 55)]},
                5 * SEC, 2 * SEC)  # the kernel re-armed the last one: 60 s from 5 s
    t.apply(event(0x40, S.TIME_WAIT, S.TIME_WAIT, ts_ns=12 * SEC, kind=EventKind.RESET_RX,
                  sport=41000, dport=8080, role=Role.ACTIVE))  # found[0] reset
    assert tw() == 2
    t.expire(40 * SEC)
    assert tw() == 2
    t.expire(50 * SEC)
    assert tw() == 1
    t.expire(59 * SEC)
    assert tw() == 1
    t.expire(60 * SEC)
    assert tw() == 0
    assert t.stats().timewait_cancelled_by_reset == 1


def test_ended_timewaits_the_kernel_timed_do_not_pile_up(event):
    t = tracker()
    for lap in range(3):
        found = [conn(20000 + i, 9000 + lap) for i in range(6000)]
        t.load_baseline([kernel_tw(c, 50) for c in found], lap * SEC)
        for i, c in enumerate(found):  # each ended by a reset: their ends no longer hold
            t.apply(event(0x40, S.TIME_WAIT, S.TIME_WAIT, ts_ns=lap * SEC + i, kind=EventKind.RESET_RX,
                          sport=c[1], dport=c[3], role=Role.ACTIVE))
    assert t.stats().timewait == 0
    assert len(t.tw.extended_ends) <= 2 * 6000 + 4096


def test_timewait_the_kernel_dropped_is_removed_and_one_it_has_is_added(event):
    t = tracker()
    client_timewait(t, event, sk=0x20, lport=40000, at=0)
    client_timewait(t, event, sk=0x21, lport=40001, at=0)
    client_timewait(t, event, sk=0x22, lport=40002, at=9.5)  # too young to judge
    other = conn(45000, 9090)
    removed, added = t.reconcile({other: kernel_tw(other, 30)}, 10 * SEC, 2 * SEC)
    assert (removed, added) == (2, 1)
    assert {k: n for k, n in t.snapshot().items() if n} == {(8080, S.TIME_WAIT): 1, (9090, S.TIME_WAIT): 1}


def test_netns_of_a_watched_socket_comes_from_the_kernel(event):
    t = tracker()
    close_wait_socket(t, event, at=0)
    c = conn(8080, 40000)
    t.reconcile({c: KernelSocket(NETNS, 2, *c, S.CLOSE_WAIT)}, 5 * SEC, 2 * SEC)
    assert t.table.sockets[0x10].netns == NETNS


def test_baseline_sockets_are_counted_and_adopted_by_their_first_event(event):
    t = tracker(states={"CLOSE_WAIT": 10})
    listener = KernelSocket(NETNS, 2, LO, 8080, bytes(16), 0, S.LISTEN, pid=7, comm="srv")
    accepted = KernelSocket(NETNS, 2, *conn(8080, 40000), S.CLOSE_WAIT)
    outgoing = KernelSocket(NETNS, 2, *conn(41000, 443), S.ESTABLISHED)
    tw = kernel_tw(conn(42000, 443), 30)
    assert t.load_baseline([listener, accepted, outgoing, tw], 100 * SEC) == 4
    assert {k: n for k, n in t.snapshot().items() if n} == {
        (8080, S.LISTEN): 1, (8080, S.CLOSE_WAIT): 1, (443, S.ESTABLISHED): 1, (443, S.TIME_WAIT): 1}
    # Age known only since the daemon started.
    report = t.scan(111 * SEC)
    assert stuck_states(report) == [(8080, "CLOSE_WAIT")]
    assert report.stuck[0].entry.age_known is False
    assert report.stuck[0].age_ns == 11 * SEC
    # The first event of the accepted socket gives it its identity: no second entry.
    spent = apply(t, event, 0x99, Role.PASSIVE, S.CLOSE_WAIT, S.LAST_ACK, 8080, 40000, 112)
    assert spent == -1, "how long it was in CLOSE_WAIT is not known"
    assert {k: n for k, n in t.snapshot().items() if n} == {
        (8080, S.LISTEN): 1, (8080, S.LAST_ACK): 1, (443, S.ESTABLISHED): 1, (443, S.TIME_WAIT): 1}
    assert t.table.sockets[0x99].age_known is True


def test_socket_opened_while_the_baseline_was_read_is_not_counted_twice(event):
    t = tracker()
    t.load_baseline([KernelSocket(NETNS, 2, *conn(41000, 443), S.ESTABLISHED)], 100 * SEC)
    # Its events were already in the ring buffer: connect() has no local port yet.
    apply(t, event, 0x30, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 443, 99.9)
    apply(t, event, 0x30, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, 41000, 443, 99.9)
    assert {k: n for k, n in t.snapshot().items() if n} == {(443, S.ESTABLISHED): 1}
    assert len(t.table.sockets) == 1


@pytest.mark.parametrize("lport, rport, listening, role, port", [
    (8080, 40000, True, Role.PASSIVE, 8080),    # something listens on the local port
    (8080, 40000, False, Role.PASSIVE, 8080),   # listener gone: only the peer's port is ephemeral
    (40000, 443, False, Role.ACTIVE, 443),      # the usual client
    (40000, 41000, False, Role.ACTIVE, 41000),  # both ephemeral: nothing says otherwise
])
def test_baseline_roles_are_inferred_from_listeners_and_the_ephemeral_range(lport, rport, listening, role, port):
    t = tracker()
    kernel = [KernelSocket(NETNS, 2, *conn(lport, rport), S.ESTABLISHED)]
    if listening:
        kernel.append(KernelSocket(NETNS, 2, *(LO, lport, bytes(16), 0), S.LISTEN))
    t.load_baseline(kernel, SEC, ephemeral=range(32768, 61000))
    entry = next(e for e in t.table.sockets.values() if e.state == S.ESTABLISHED)
    assert (entry.role, entry.port) == (role, port)


def test_sockets_left_in_a_state_by_a_missed_transition_are_corrected(event):
    """The kernel skips the program now and then: the table must not keep a socket
    in a state it has left, nor one that is gone."""
    t = tracker()
    for sk, lport in ((0x40, 40010), (0x41, 40011), (0x42, 40012), (0x43, 40013)):
        for old, new in [(S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1)]:
            apply(t, event, sk, Role.ACTIVE, old, new, lport, 8080, 1.0 if sk != 0x43 else 9.5)
    apply(t, event, 0x44, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 8080, 1.0)  # not bound yet: no conn
    kernel = {
        conn(40011, 8080): KernelSocket(NETNS, 2, *conn(40011, 8080), S.FIN_WAIT1),  # as modelled
        conn(40012, 8080): KernelSocket(NETNS, 2, *conn(40012, 8080), S.FIN_WAIT2),  # moved on
    }
    t.reconcile(kernel, 10 * SEC, 2 * SEC)
    assert 0x40 not in t.table.sockets, "gone from the kernel: gone from the table"
    assert t.table.sockets[0x41].netns == NETNS and t.table.sockets[0x41].age_known
    assert (t.table.sockets[0x42].state, t.table.sockets[0x42].age_known) == (S.FIN_WAIT2, False)
    assert 0x43 in t.table.sockets, "too young to judge"
    assert 0x44 in t.table.sockets, "a connect() in progress has no local port to match yet"
    assert {k: n for k, n in t.snapshot().items() if n} == {
        (8080, S.FIN_WAIT1): 2, (8080, S.FIN_WAIT2): 1, (8080, S.SYN_SENT): 1}
    assert (t.stats().live_removed, t.stats().live_corrected) == (1, 1)


def test_after_a_missed_transition_the_time_in_state_is_unknown(event):
    t = tracker(states={"FIN_WAIT1": 1})
    for old, new in [(S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1)]:
        apply(t, event, 0x50, Role.ACTIVE, old, new, 40020, 8080, 0)
    # FIN_WAIT1 -> FIN_WAIT2 never reached the daemon; FIN_WAIT2 -> CLOSE does, 5 s later.
    assert apply(t, event, 0x50, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, 40020, 8080, 5) == -1
    assert (8080, S.FIN_WAIT1) not in t.outcomes().state_durations
    assert t.stuck_totals() == {}, "5 s in FIN_WAIT1 is not known: it may have left at once"
    assert t.snapshot()[(8080, S.TIME_WAIT)] == 1


# -- retransmissions as evidence --------------------------------------------------------


def last_ack_socket(t: Tracker, event, sk=0x10, port=8080, peer=40000, at=0.0) -> None:
    close_wait_socket(t, event, sk, port, peer, at)
    apply(t, event, sk, Role.PASSIVE, S.CLOSE_WAIT, S.LAST_ACK, port, peer, at)


def retransmit(t: Tracker, event, sk, state, at_s: float, port=8080, peer=40000) -> None:
    t.apply(event(sk, state, state, ts_ns=int(at_s * SEC), sport=port, dport=peer, service_port=port,
                  role=Role.PASSIVE, kind=EventKind.RETRANSMIT))


def test_a_stuck_last_ack_names_its_retransmitted_fins(event):
    t = tracker()
    last_ack_socket(t, event, at=0)
    for at in (0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4, 53.0):
        retransmit(t, event, 0x10, S.LAST_ACK, at)
    (s,) = t.scan(63 * SEC).stuck
    assert s.retransmits == (8, 53 * SEC)
    assert s.evidence(63 * SEC) == ("LAST_ACK for 63 s: our FIN retransmitted 8 times (sent 9), the last "
                                    "10 s ago, never acknowledged")
    # A retransmission changes no state and counts nothing else.
    assert t.snapshot()[(8080, S.LAST_ACK)] == 1


def test_retransmissions_of_an_earlier_state_are_not_evidence_for_this_one(event):
    t = tracker(states={"CLOSE_WAIT": 10})
    close_wait_socket(t, event, at=0)
    retransmit(t, event, 0x10, S.ESTABLISHED, 0.0)  # data, before the peer closed
    (s,) = t.scan(11 * SEC).stuck
    assert s.retransmits is None
    assert s.evidence(11 * SEC).startswith("CLOSE_WAIT for 11 s, longer than 10 s: the peer closed")
    entry = t.table.sockets[0x10]
    assert entry.retransmits == [S.ESTABLISHED, 1, 0, 1]


def test_a_retransmission_of_a_socket_not_tracked_is_ignored(event):
    t = tracker()
    retransmit(t, event, 0x99, S.LAST_ACK, 1.0)
    assert t.scan(2 * SEC).stuck == [] and 0x99 not in t.table.sockets


def test_a_fin_wait2_its_owner_half_closed_and_holds_is_not_stuck_until_it_closes_it(event):
    """shutdown(SHUT_WR) and the socket kept: half-closed, waiting on the peer, not stuck.
    close() after it (FIN_WAIT2 -> FIN_WAIT2) leaves an orphan, which is; so is a
    FIN_WAIT2 whose FIN came from close()."""
    from tracer.core.states import F_SHUT_WR

    t = tracker(states={"FIN_WAIT2": 5})
    for sk, flags in ((0x30, F_SHUT_WR), (0x31, 0), (0x32, F_SHUT_WR)):
        for old, new in [(S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1),
                         (S.FIN_WAIT1, S.FIN_WAIT2)]:
            t.apply(event(sk, old, new, ts_ns=0, sport=40000 + sk, dport=8080, service_port=8080,
                          role=Role.ACTIVE, flags=flags if new in (S.FIN_WAIT1, S.FIN_WAIT2) else 0))
    assert [s.entry.sk for s in t.scan(6 * SEC).stuck] == [0x31]
    # Its owner closes 0x32 at 7 s: an orphan from then on, stuck in the same visit to FIN_WAIT2.
    t.apply(event(0x32, S.FIN_WAIT2, S.FIN_WAIT2, ts_ns=7 * SEC, sport=40000 + 0x32, dport=8080,
                  service_port=8080, role=Role.ACTIVE, flags=F_SHUT_WR))
    entry = t.table.sockets[0x32]
    assert entry.closed_by_owner and entry.since_ns == 0 and entry.history[0::2] == [S.SYN_SENT, S.ESTABLISHED,
                                                                                        S.FIN_WAIT1, S.FIN_WAIT2]
    orphan, closed = sorted(t.scan(8 * SEC).stuck, key=lambda s: -s.entry.sk)
    assert (orphan.entry.sk, closed.entry.sk) == (0x32, 0x31)
    assert closed.evidence(8 * SEC) == ("FIN_WAIT2 for 8 s, longer than 5 s: orphaned: its owner closed it, the "
                                        "kernel keeps it (net.ipv4.tcp_fin_timeout) and the peer never sent its FIN")
    assert t.outcome.stuck_total == {(8080, S.FIN_WAIT2.value): 2}
