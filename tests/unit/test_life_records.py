"""A young socket's life in one kernel record (bpf/tcpstates.bpf.c): the tracker's
short path for it must leave exactly what its events applied one by one leave."""

from __future__ import annotations

import random

import pytest

from tests.conftest import make_event
from tests.unit.tracker_state import tracker_state
from tracer.core import record
from tracer.core.closes import HOW_NAMES
from tracer.core.detector import Rules
from tracer.core.states import F_SHUT_WR, EventKind, Role, TcpState as S
from tracer.core.tracker import Tracker

TW_NS = 60 * 10**9
CLOSE = S.CLOSE.value
BIRTHS = {(S.CLOSE.value, S.SYN_SENT.value), (S.LISTEN.value, S.SYN_RECV.value)}


def assemble(events: list, take_every: int = 0, seed: int = 1) -> list[bytes]:
    """The records the kernel program sends for these events, in its order: a socket
    seen opening is held until it closes (or its record is full, or, every
    ``take_every`` events at random, user space takes it); any other transition
    goes alone. What is still held at the end is taken."""
    rng = random.Random(seed)
    lives: dict[int, list] = {}
    out: list[bytes] = []
    for ev in events:
        sk, kind, old, new = ev[1], ev[9], ev[10], ev[11]
        if take_every and lives and rng.randrange(take_every) == 0:
            out.append(record.pack(lives.pop(rng.choice(sorted(lives)))))
        if kind == EventKind.STATE and ((old, new) in BIRTHS or new == S.LISTEN):
            lives[sk] = [ev]
        elif sk in lives:
            if len(lives[sk]) == 1 + record.MORE:
                out.append(record.pack(lives.pop(sk)))
                out.append(record.pack([ev]))
                continue
            lives[sk].append(ev)
            if kind == EventKind.STATE and new == CLOSE:
                out.append(record.pack(lives.pop(sk)))
        else:
            out.append(record.pack([ev]))
    out += [record.pack(life) for life in lives.values()]
    return out


def connection(i: int, t0: int, *, client_closes: bool = True, reset: bool = False,
               refused: bool = False, timeout: bool = False, abort: bool = False, shut: bool = False,
               step: int = 1000) -> list:
    """Both sockets of loopback connection i, in time order. ``abort``: the client
    closes with SO_LINGER 0 (its reset comes after its CLOSE); ``shut``: the closer's
    FIN comes from shutdown(SHUT_WR)."""
    c, s = 0x1000 + 2 * i, 0x1001 + 2 * i
    cport = 40000 + i
    cli = dict(sport=cport, dport=20001, service_port=20001, role=Role.ACTIVE, pid=10, comm=b"client")
    srv = dict(sport=20001, dport=cport, service_port=20001, role=Role.PASSIVE, pid=20, comm=b"server")
    t = iter(range(t0, t0 + 100 * step, step))
    if timeout:  # nobody answered the SYN
        return [make_event(c, S.CLOSE, S.SYN_SENT, ts_ns=next(t), **cli),
                make_event(c, S.SYN_SENT, S.CLOSE, ts_ns=next(t), **cli)]
    if refused:
        return [make_event(c, S.CLOSE, S.SYN_SENT, ts_ns=next(t), **cli),
                make_event(c, 0, 0, kind=EventKind.RESET_RX, ts_ns=next(t), **cli),
                make_event(c, S.SYN_SENT, S.CLOSE, ts_ns=next(t), **cli)]
    evs = [make_event(c, S.CLOSE, S.SYN_SENT, ts_ns=next(t), **cli),
           make_event(s, S.LISTEN, S.SYN_RECV, ts_ns=next(t), **srv),
           make_event(c, S.SYN_SENT, S.ESTABLISHED, ts_ns=next(t), **cli),
           make_event(s, S.SYN_RECV, S.ESTABLISHED, ts_ns=next(t), **srv)]
    if reset:
        return evs + [make_event(s, S.ESTABLISHED, S.CLOSE, ts_ns=next(t), **srv),
                      make_event(c, 0, 0, kind=EventKind.RESET_RX, ts_ns=next(t), **cli),
                      make_event(c, S.ESTABLISHED, S.CLOSE, ts_ns=next(t), **cli)]
    if abort:
        return evs + [make_event(c, S.ESTABLISHED, S.CLOSE, ts_ns=next(t), **cli),
                      make_event(c, S.ESTABLISHED, S.ESTABLISHED, kind=EventKind.RESET_TX, ts_ns=next(t), **cli),
                      make_event(s, 0, 0, kind=EventKind.RESET_RX, ts_ns=next(t), **srv),
                      make_event(s, S.ESTABLISHED, S.CLOSE, ts_ns=next(t), **srv)]
    a, b, ak, bk = (c, s, cli, srv) if client_closes else (s, c, srv, cli)
    if shut:  # the program keeps the flag on the socket from its FIN on
        ak = dict(ak, flags=F_SHUT_WR)
    return evs + [make_event(a, S.ESTABLISHED, S.FIN_WAIT1, ts_ns=next(t), **ak),
                  make_event(b, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=next(t), **bk),
                  make_event(a, S.FIN_WAIT1, S.FIN_WAIT2, ts_ns=next(t), **ak),
                  make_event(b, S.CLOSE_WAIT, S.LAST_ACK, ts_ns=next(t), **bk),
                  make_event(a, S.FIN_WAIT2, S.CLOSE, ts_ns=next(t), **ak),
                  make_event(b, S.LAST_ACK, S.CLOSE, ts_ns=next(t), **bk)]


def workload(n: int = 60, seed: int = 7, step: int = 1000) -> list:
    """Connections of every kind, interleaved; one port reused (tcp_tw_reuse)."""
    rng = random.Random(seed)
    listener = make_event(0x1, S.CLOSE, S.LISTEN, ts_ns=1, sport=20001, service_port=20001,
                          role=Role.LISTENER, pid=20, comm=b"server")
    evs = []
    for i in range(n):
        kind = rng.choice(["client", "server", "reset", "refused", "timeout", "abort", "shutdown"])
        conn = connection(i % (n // 2), 10 + i * 3 * step, client_closes=kind != "server",
                          reset=kind == "reset", refused=kind == "refused", timeout=kind == "timeout",
                          abort=kind == "abort", shut=kind == "shutdown", step=step)
        evs += [(ev[0], ev[1] + (i << 20), *ev[2:]) for ev in conn]
    evs.sort(key=lambda ev: ev[0])
    return [listener] + evs


def both(events: list, rules: Rules | None = None, take_every: int = 0,
         max_sockets: int = 10_000) -> tuple[dict, dict, int]:
    records = [record.unpack(r) for r in assemble(events, take_every)]
    one_by_one = Tracker(TW_NS, max_sockets, rules, keep_lifecycles=True)
    one_by_one.apply_batch([ev for rec in records for ev in record.events_of(rec)])
    whole = Tracker(TW_NS, max_sockets, rules, keep_lifecycles=True)
    whole.apply_records(records)
    return tracker_state(one_by_one), tracker_state(whole), sum(1 for r in records if r[record.MORE_AT])


@pytest.mark.parametrize("take_every", [0, 3, 10])
def test_lives_in_one_record_leave_what_their_events_leave(take_every):
    one_by_one, whole, lives = both(workload(), take_every=take_every)
    assert lives > 20
    assert whole == one_by_one
    assert {"timeout", "refused"} <= {reason for _, reason in whole["failures"]}
    assert whole["stats"].events == len(workload())
    assert {how for _, _, how in whole["closes"]} == {"close", "shutdown_wr", "reset_sent", "reset_received", "timeout"}


def test_each_stored_life_says_how_its_end_closed():
    """The timeline's lives carry how each end finished, the same from the short path
    as one by one: a late reset (SO_LINGER 0) tells its life before the life goes on."""
    t = 10_000
    kinds = {"close": {}, "shut": {"shut": True}, "abort": {"abort": True}, "peer": {"client_closes": False}}
    events, ids = [], {}
    for i, (name, kw) in enumerate(kinds.items()):
        conn = connection(i, t + i * 100_000, **kw)
        ids[name] = conn[0][1]
        events += conn
    trackers = [Tracker(TW_NS, 100, keep_lifecycles=True) for _ in range(2)]
    records = [record.unpack(r) for r in assemble(events)]
    trackers[0].apply_batch([ev for rec in records for ev in record.events_of(rec)])
    trackers[1].apply_records(records)
    for tracker in trackers:
        tracker.expire(10**13)
        by_sk = {}
        for life in tracker.drain_raw():
            by_sk.setdefault(life[4], []).append(life)  # by local port
        hows = {name: [HOW_NAMES[life[13]] for life in by_sk[40000 + i] if life[12] is not None][-1]
                for i, name in enumerate(kinds)}
        assert hows == {"close": "close", "shut": "shutdown_wr", "abort": "reset_sent", "peer": "close"}
        server = {name: [HOW_NAMES[life[13]] for life in by_sk[20001] if life[6] == 40000 + i][-1]
                  for i, name in enumerate(kinds)}
        assert server == {"close": "close", "shut": "close", "abort": "reset_received", "peer": "close"}


def test_a_life_stuck_on_the_way_is_counted_as_stuck():
    # Sockets that linger in CLOSE_WAIT (5 ms here) past a 1 ms rule, inside a record.
    rules = Rules.build(30, {"CLOSE_WAIT": 0.001})
    one_by_one, whole, _ = both(workload(step=5_000_000), rules)
    assert whole["stuck"] and whole == one_by_one


def test_a_life_whose_socket_the_table_holds_takes_the_long_path():
    evs = connection(0, 100)
    first = [ev for ev in evs if ev[0] <= 300]  # both sockets opened, seen one by one
    later = assemble([ev for ev in evs if ev[0] > 300])
    tracker = Tracker(TW_NS, 100, keep_lifecycles=True)
    tracker.apply_batch(first)
    tracker.apply_records([record.unpack(r) for r in later])
    assert tracker.table.sockets == {} and tracker.tw.now == 1


def test_a_full_table_evicts_as_the_events_would():
    one_by_one, whole, _ = both(workload(n=40), take_every=4, max_sockets=3)
    assert whole == one_by_one
    assert whole["stats"].evicted > 0


def both_from_baseline(records: list, baseline: list) -> list[Tracker]:
    """Two trackers that loaded ``baseline``, one given the records' events one by one
    and one the records; asserts they hold the same. Returns them."""
    trackers = [Tracker(TW_NS, 10_000, keep_lifecycles=True) for _ in range(2)]
    for t in trackers:
        t.load_baseline(baseline, 0)
    trackers[0].apply_batch([ev for rec in records for ev in record.events_of(rec)])
    trackers[1].apply_records(records)
    assert tracker_state(trackers[0]) == tracker_state(trackers[1])
    return trackers


def test_sockets_loaded_at_start_leave_the_short_path_to_everything_else():
    """A host's sockets from before the start stay in the baseline until an event names
    them, often for good: only a life of the same connection needs the long path."""
    from tracer.core.kernel_socket import KernelSocket

    evs = workload(n=40)
    twin = evs[1]  # the first client, as if the table had been read just after it opened
    baseline = [KernelSocket(1, record.AF_INET, LOOP, 22, LOOP, 50000, S.ESTABLISHED.value),
                KernelSocket(1, record.AF_INET, twin[2], twin[5], twin[3], twin[6], S.SYN_SENT.value)]
    records = [record.unpack(r) for r in assemble(evs)]
    trackers = both_from_baseline(records, baseline)
    assert list(trackers[1].table.baseline) == [baseline[0].conn]  # the twin is named, sshd's waits


LOOP = bytes([127, 0, 0, 1]) + bytes(12)


def test_a_socket_born_at_the_address_of_an_unfinished_one_ends_it():
    """The program may never see a socket's end (seen: a client's FIN_WAIT2 and CLOSE,
    processed on top of a thread the kernel runs no BPF program for); it then sends the
    life open, and the next socket at that address, born, tells the table the first one
    is gone."""
    first = connection(0, 100)
    client_sk = first[0][1]
    unfinished = [ev for ev in first if ev[1] == client_sk][:3]  # up to FIN_WAIT1
    again = [ev for ev in connection(0, 10_000) if ev[1] == client_sk]
    tracker = Tracker(TW_NS, 100, keep_lifecycles=True)
    tracker.apply_records([record.unpack(record.pack(unfinished)), record.unpack(record.pack(again))])
    assert tracker.stats().live_removed == 1
    assert tracker.table.sockets == {} and tracker.tw.now == 1
    assert tracker.counts[(20001, S.FIN_WAIT1.value)] == 0
    lives = tracker.drain_raw()
    ended = [life for life in lives if life[12] is not None]
    assert [life[11][0::2] for life in ended] == [(S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT1)]
    assert ended[0][12] == again[0][0]  # ended when the next socket was born


def test_the_twin_of_a_transition_a_taken_life_holds_is_dropped():
    """The program appends in place and then finds the life taken: the transition goes
    on its own as well, and may be in the copy user space took."""
    evs = [ev for ev in connection(0, 100) if ev[1] == 0x1000]  # the client's five
    taken = record.unpack(record.pack(evs[:2]))  # SYN_SENT, ESTABLISHED
    twin = record.unpack(record.pack([evs[1]]))
    rest = [record.unpack(record.pack([ev])) for ev in evs[2:]]
    once, twice = Tracker(TW_NS, 100, keep_lifecycles=True), Tracker(TW_NS, 100, keep_lifecycles=True)
    once.apply_records([taken, *rest])
    twice.apply_records([taken, twin, *rest])
    s1, s2 = tracker_state(once), tracker_state(twice)
    assert s2["stats"].events == s1["stats"].events + 1  # received, not applied
    del s1["stats"], s2["stats"]
    assert s1 == s2


def test_a_short_life_of_a_connection_in_the_baseline_takes_the_long_path():
    """The twin of a connection opened while the baseline was read sits in the baseline:
    its life, whole in one record amid others, must drop the twin as its events would."""
    from tracer.core.kernel_socket import KernelSocket

    evs = [ev for i in range(6) for ev in connection(i, 10 + i * 1000)]
    evs.sort(key=lambda ev: ev[0])
    cport = 40000 + 3
    baseline = [KernelSocket(1, record.AF_INET, LOOP, cport, LOOP, 20001, S.SYN_SENT.value),
                KernelSocket(1, record.AF_INET, LOOP, 22, LOOP, cport, S.ESTABLISHED.value)]
    records = [record.unpack(r) for r in assemble(evs)]
    assert sum(1 for r in records if r[record.MORE_AT]) == 12, "every life whole in its record"
    trackers = both_from_baseline(records, baseline)
    assert list(trackers[1].table.baseline) == [baseline[1].conn]  # the twin went; a socket on another port stays
