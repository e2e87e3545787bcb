"""The kernel's socket table into the model (daemon.reconciler.Reconciler), with a table
the test writes: the baseline at start, the reconcile rounds, and their failures."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tracer.core.clock import FakeClock
from tracer.core.kernel_socket import KernelSocket
from tracer.core.record import AF_INET
from tracer.core.states import TcpState as S
from tracer.core.tracker import Tracker
from tracer.daemon.reconciler import BASELINE_STATES, RECONCILE_STATES, Reconciler
from tracer.sources.kernel_table import KernelTableError
from tracer.sources.replay import ReplaySource

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
TW_NS = 60 * 10**9
LOOP = bytes([127, 0, 0, 1]) + bytes(12)


class Table:
    """The kernel's table as the test sets it; a read takes ``read_s`` on the clock."""

    def __init__(self, clock: FakeClock, sockets: list[KernelSocket], problems: Iterable[str] = (),
                 owners: dict[int, tuple[int, str]] | None = None, read_s: float = 0.0) -> None:
        self.clock, self.sockets, self.problems = clock, sockets, list(problems)
        self._owners = owners or {}
        self.read_s = read_s
        self.asked: list[list[int]] = []
        self.fails = False

    def dump(self, states: Iterable[int]) -> tuple[list[KernelSocket], list[str]]:
        states = list(states)
        self.asked.append(states)
        self.clock.advance(self.read_s)
        if self.fails:
            raise KernelTableError("reading the kernel's socket table (sock_diag) failed: test")
        return [k for k in self.sockets if k.state in states], list(self.problems)

    def owners(self) -> dict[int, tuple[int, str]]:
        return self._owners


class Source:
    def __init__(self) -> None:
        self.listeners: dict[int, tuple[int, str]] | None = None

    def seed_listeners(self, listeners: dict[int, tuple[int, str]]) -> None:
        self.listeners = listeners


def sock(state: S, sport: int, dport: int, inode: int = 0, netns: int = 1, **kw) -> KernelSocket:
    return KernelSocket(netns, AF_INET, LOOP, sport, LOOP, dport, state.value, inode=inode, **kw)


def test_the_baseline_loads_every_open_socket_names_owners_and_seeds_the_listeners():
    clock = FakeClock()
    table = Table(clock, [sock(S.LISTEN, 22, 0, inode=7), sock(S.ESTABLISHED, 22, 50000, inode=8, netns=2),
                          sock(S.TIME_WAIT, 40000, 22)], owners={7: (1, "sshd")})
    tracker, source = Tracker(TW_NS, 100), Source()
    reconciler = Reconciler(tracker, clock, table=table)
    assert reconciler.load_baseline(source) == 3
    assert table.asked == [BASELINE_STATES]
    assert source.listeners == {22: (1, "sshd")}
    assert {k: n for k, n in tracker.snapshot().items() if n} == {
        (22, S.LISTEN): 1, (22, S.ESTABLISHED): 1, (22, S.TIME_WAIT): 1}


def test_a_baseline_takes_what_could_be_read_and_counts_the_rest(caplog):
    clock = FakeClock()
    table = Table(clock, [sock(S.ESTABLISHED, 22, 50000)], problems=["netns 4026532681: permission denied"])
    reconciler = Reconciler(Tracker(TW_NS, 100), clock, table=table)
    assert reconciler.load_baseline(Source()) == 1
    assert reconciler.failures == 1 and "permission denied" in caplog.text


def replayed(clock: FakeClock) -> Tracker:
    tracker = Tracker(TW_NS, 100)
    source = ReplaySource(FIXTURE)
    while (batch := source.read_records()) is not None:
        tracker.apply_records(batch)
    return tracker


def test_a_reconcile_ends_the_time_waits_the_kernel_no_longer_has():
    clock = FakeClock(start_ns=1843270650909 + 10 * 10**9)  # ten seconds after the fixture
    tracker = replayed(clock)
    tracker.seen_until_ns = clock.monotonic_ns()
    reconciler = Reconciler(tracker, clock, table=Table(clock, [], read_s=0.25))
    assert reconciler.reconcile() == (3, 0)
    assert reconciler.last_read_s == 0.25 and reconciler.failures == 0
    assert tracker.stats().timewait == 0


def test_a_table_read_only_in_part_judges_nothing(caplog):
    """Judged against a partial table, the unread namespace's sockets would look gone."""
    clock = FakeClock(start_ns=1843270650909 + 10 * 10**9)
    tracker = replayed(clock)
    tracker.seen_until_ns = clock.monotonic_ns()
    table = Table(clock, [], problems=["netns 4026532681: gone"], read_s=0.25)
    reconciler = Reconciler(tracker, clock, table=table)
    assert reconciler.reconcile() == (0, 0)
    assert table.asked == [RECONCILE_STATES]
    table.fails = True
    caplog.set_level(logging.WARNING, logger="tracer.daemon")
    assert reconciler.reconcile() == (0, 0)
    assert reconciler.failures == 2 and tracker.stats().timewait == 3
    assert reconciler.last_read_s == 0.0, "only whole reads are timed"
    assert "sock_diag" in caplog.text


def test_slow_reads_stretch_the_interval_to_ten_times_their_cost():
    clock = FakeClock()
    table = Table(clock, [], read_s=0.5)
    reconciler = Reconciler(Tracker(TW_NS, 100), clock, every_s=3.0, table=table)
    assert reconciler.interval_s() == 3.0
    reconciler.reconcile()
    assert reconciler.interval_s() == 5.0
    table.read_s = 0.1
    reconciler.reconcile()
    assert reconciler.interval_s() == 3.0


def test_the_first_reconcile_is_due_an_interval_after_the_baseline_read():
    """The baseline is a read of the table: reading again at once would only repeat it,
    while a load that started with the daemon paid for it."""
    clock = FakeClock()
    table = Table(clock, [], read_s=0.5)
    reconciler = Reconciler(Tracker(TW_NS, 100), clock, every_s=3.0, table=table)
    assert reconciler.due_ns() == 0, "nothing read yet: due now"
    reconciler.load_baseline(Source())
    assert reconciler.due_ns() == clock.monotonic_ns() + 3 * 10**9
    clock.advance(3.0)
    reconciler.reconcile()  # takes 0.5 s: the next one is 5 s after it
    assert reconciler.due_ns() == clock.monotonic_ns() + 5 * 10**9


def test_a_busy_reader_puts_the_reads_off_to_one_timewait_length():
    """At the reader's limit a read of a full TIME_WAIT table costs what the load wants;
    a stuck TIME_WAIT can first be told 60 s after its close anyway."""
    clock, busy = FakeClock(), [True]
    reconciler = Reconciler(Tracker(TW_NS, 100), clock, every_s=10.0, table=Table(clock, []),
                            busy=lambda: busy[0])
    reconciler.reconcile()
    read_at = clock.monotonic_ns()
    assert reconciler.due_ns() == read_at + 60 * 10**9
    busy[0] = False
    assert reconciler.due_ns() == read_at + 10 * 10**9
