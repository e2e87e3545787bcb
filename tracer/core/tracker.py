"""The socket table: each socket's current state, since when, and what it is.

One writer applies events; readers take snapshots under the same lock. The
tracepoint never reports TIME_WAIT, so the tracker models it: an orderly active
close (FIN_WAIT1, FIN_WAIT2 or CLOSING to CLOSE, no reset) hands the connection to
a timewait mini-socket that lives for the kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN,
60 s). What no tracepoint shows (a TIME_WAIT killed early, or kept alive by a
retransmitted FIN that re-arms its timer) comes from the kernel's socket table
through ``reconcile``, which also tells each socket's network namespace, and
``load_baseline`` brings in the sockets that existed before the daemon started.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from itertools import count

from tracer.core.detector import WATCHED, Report, Rules, Stuck
from tracer.core.kernel_socket import Conn, KernelSocket
from tracer.core.lifecycle import Lifecycle, RawLife, from_raw, pack_ended, pack_spans, unpack_ended
from tracer.core.record import MORE_AT, MORE_STATE_AT, MORE_TS_AT, Event, Record, events_of
from tracer.core.states import (
    ACTIVE_CLOSE_STATES,
    F_ROLE_INFERRED,
    EventKind,
    Role,
    TcpState,
)

_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value
_SYN_SENT = TcpState.SYN_SENT.value
_LISTEN = TcpState.LISTEN.value
_ACTIVE_CLOSE = frozenset(int(s) for s in ACTIVE_CLOSE_STATES)
# The states the kernel's table is read for: the watched (stuck-prone) ones and CLOSING.
RECONCILED_STATES = frozenset([s.value for s in WATCHED if s != TcpState.TIME_WAIT] + [TcpState.CLOSING.value])
_STATE = EventKind.STATE.value
# A re-armed TIME_WAIT timer shows as more time left in the kernel than in the model.
_REARM_SLACK_NS = 1_000_000_000
# Ended TIME_WAITs the expiry FIFO may hold beyond twice the live ones.
_FIFO_SLACK = 4096
# Ended lives waiting for the store at most (Tracker.max_pending_lifecycles).
PENDING_LIVES_MAX = 1 << 20

# Histogram buckets for the time spent in a state and for whole connections:
# 1-2-5 steps from 10 microseconds to 10 minutes (upper bounds, seconds).
DURATION_BUCKETS_S: tuple[float, ...] = tuple(
    m * 10.0 ** e for e in range(-5, 3) for m in (1, 2, 5)) + (600.0,)
_BOUNDS_NS = [round(b * 1e9) for b in DURATION_BUCKETS_S]
_LISTEN_OR_CLOSE = frozenset({TcpState.CLOSE.value, TcpState.LISTEN.value})
_CONNECTION_ROLES = frozenset({Role.ACTIVE.value, Role.PASSIVE.value})


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum, in nanoseconds."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(_BOUNDS_NS, ns)] += 1
        self.sum_ns += ns

    def copy(self) -> "Histogram":
        h = Histogram()
        h.counts = list(self.counts)
        h.sum_ns = self.sum_ns
        return h




# Addresses and command names, one bytes object for each value: every record brings
# its own copies, and a host holding 100,000 connections to a few peers would keep
# 300,000 of them (tests/bench/tracker_memory.py).
_INTERNED_MAX = 1 << 16
_interned: dict[bytes, bytes] = {}


def _intern(value: bytes) -> bytes:
    got = _interned.get(value)
    if got is None:
        if len(_interned) >= _INTERNED_MAX:
            _interned.clear()
        got = _interned[value] = value
    return got


class SocketEntry:
    """What the table knows of one socket. Times are monotonic kernel nanoseconds.

    ``age_known`` is False for sockets found in the kernel's table rather than seen
    entering their state: ``since_ns`` is then when the daemon first saw them.
    ``expires_ns`` is set for a TIME_WAIT whose end the kernel's timer decides
    (re-armed, or found in the table), 0 for one the model ends after the standard length.
    ``history`` is flat, [state, since_ns, state, since_ns, ...]: a list of pairs
    costs a tuple per transition.
    """

    __slots__ = (
        "sk", "state", "since_ns", "first_ns", "port", "role", "family", "saddr", "sport",
        "daddr", "dport", "pid", "comm", "flags", "reset", "netns", "age_known", "expires_ns",
        "stuck_state", "opened", "uid", "history", "ended_ns",
    )

    def __init__(self, ev: Event) -> None:
        ts, sk, saddr, daddr, pid, sport, dport, svc, fam, _kind, old, new, role, flags, comm = ev
        self.sk = sk
        self.state = new
        self.since_ns = ts
        self.first_ns = ts
        self.port = svc
        self.role = role
        self.family = fam
        self.saddr = _intern(saddr)
        self.sport = sport
        self.daddr = _intern(daddr)
        self.dport = dport
        self.pid = pid
        self.comm = _intern(comm)
        self.flags = flags
        self.reset = False
        self.netns = 0  # unknown until the kernel's table names it
        self.age_known = True
        self.expires_ns = 0
        self.stuck_state = 0  # the state this socket was last counted stuck in
        self.opened = old in _LISTEN_OR_CLOSE  # seen opening: first_ns is its birth
        self.uid = 0  # the timeline's id, given when the table takes the socket
        # (state, since) for the timeline; a socket first seen at its close was in `old`.
        self.history: list[int] = [old if new == _CLOSE else new, ts]
        self.ended_ns = 0

    @property
    def conn(self) -> Conn:
        return (self.saddr, self.sport, self.daddr, self.dport)


def _plan(first_old: int, first_new: int, codes: bytes, more: int) -> tuple | None:
    """How a record's life goes, when it is one the short path takes: opened (from
    CLOSE or a listener), no resets, CLOSE once and last. (states before each later
    transition, index of the one that completes connect() or -1, whether the close
    is an orderly active one that leaves a TIME_WAIT, whether connect() failed, the
    states as bytes)."""
    if first_old not in _LISTEN_OR_CLOSE or first_new == _CLOSE:
        return None
    states = [first_new]
    for code in codes[:more]:
        if code >> 4 or code == _CLOSE and len(states) < more or not code:
            return None
        states.append(code)
    if states[-1] != _CLOSE:
        return None
    visited = tuple(states[:-1])
    connect_at = next((i for i in range(1, len(visited)) if visited[i - 1] == _SYN_SENT), -1)
    return visited, connect_at, visited[-1] in _ACTIVE_CLOSE, visited[-1] == _SYN_SENT, bytes(visited)


def _entry_from_kernel(k: KernelSocket, since_ns: int, role: int, port: int) -> SocketEntry:
    saddr, sport, daddr, dport = k.conn
    comm = k.comm.encode()[:15].ljust(16, b"\0")
    entry = SocketEntry((since_ns, 0, saddr, daddr, k.pid, sport, dport, port, k.family, _STATE, 0,
                         k.state, role, F_ROLE_INFERRED, comm))
    entry.netns = k.netns
    entry.age_known = False
    return entry


@dataclass(frozen=True)
class Outcomes:
    state_durations: dict[tuple[int, int], Histogram]
    connection_durations: dict[tuple[int, int], Histogram]
    timewait_entered: dict[int, int]
    connect_failures: dict[tuple[int, str], int]


@dataclass(frozen=True)
class TrackerStats:
    events: int
    sockets: int
    timewait: int
    evicted: int
    timewait_entered: int
    timewait_cancelled_by_reset: int
    timewait_reused: int
    timewait_reconciled_removed: int
    timewait_reconciled_added: int
    timewait_rearmed: int
    live_removed: int
    live_corrected: int
    baseline_sockets: int
    lifecycles_dropped: int


class Tracker:
    """Applies events to the socket table and keeps per-(port, state) counts."""

    def __init__(self, timewait_ns: int, max_sockets: int, rules: Rules | None = None,
                 keep_lifecycles: bool = False) -> None:
        if timewait_ns <= 0 or max_sockets <= 0:
            raise ValueError("timewait_ns and max_sockets must be positive")
        self.timewait_ns = timewait_ns
        self.max_sockets = max_sockets
        self.rules = rules
        self._stuck_floor = rules.lowest_ns() if rules else {}
        # The same by state number, with no floor where no rule watches the state.
        self._floors = [self._stuck_floor.get(state, 1 << 62) for state in range(16)]
        self._min_floor = min(self._floors)
        self.lock = threading.Lock()
        self.sockets: dict[int, SocketEntry] = {}
        # Sockets now modelled in TIME_WAIT, oldest first: all share one length, so a
        # FIFO is also the expiry order. Entries whose end the kernel's timer decides
        # move to _extended (and are skipped here when they reach the front).
        self.timewait: deque[SocketEntry] = deque()
        self._extended: dict[Conn, SocketEntry] = {}
        # Their ends, soonest first: (expires_ns, tie-break, entry). An end that no
        # longer holds (the entry left _extended, or its timer moved) is skipped.
        self._extended_ends: list[tuple[int, int, SocketEntry]] = []
        self._tie = count()
        # Every TIME_WAIT by connection: how a reset that follows the close finds it
        # (the kernel sets CLOSE before it sends an abortive reset), and how the
        # kernel's socket table is matched against the model.
        self._timewait_by_conn: dict[Conn, SocketEntry] = {}
        # Sockets loaded from the kernel's table at start, until an event names them.
        self._baseline_by_conn: dict[Conn, SocketEntry] = {}
        # (service port, state) -> sockets now in it. Keys are kept at zero, so a
        # port in use keeps its series.
        self.counts: dict[tuple[int, int], int] = {}
        # (service port, state) -> sockets that crossed that state's stuck threshold.
        self.stuck_total: dict[tuple[int, int], int] = {}
        # (service port, state) -> time spent in the state, observed as sockets leave it.
        self.state_durations: dict[tuple[int, int], Histogram] = {}
        # (service port, role) -> lifetime of full sockets seen from their opening to CLOSE.
        self.connection_durations: dict[tuple[int, int], Histogram] = {}
        self.timewait_entered_by_port: dict[int, int] = {}
        # (service port, reason) -> connect() attempts that ended in SYN_SENT -> CLOSE.
        self.connect_failures: dict[tuple[int, str], int] = {}
        self.events = 0
        # The kernel's clock up to which the reader has applied what the program sent
        # (0: not known; the daemon's event reader keeps it). The kernel's socket table
        # is judged only that far, less a grace: beyond, the model may not know yet.
        self.seen_until_ns = 0
        self.evicted = 0
        self.timewait_now = 0  # live TIME_WAIT entries (cancelled ones excluded)
        self.timewait_entered = 0
        self.timewait_cancelled = 0
        self.timewait_reused = 0
        self.timewait_reconciled_removed = 0
        self.timewait_reconciled_added = 0
        self.timewait_rearmed = 0
        self.live_removed = 0  # full sockets the kernel no longer had
        self.live_corrected = 0  # full sockets the kernel had in another state
        self.baseline_sockets = 0
        self._synthetic_sk = 0  # keys for sockets known only from the kernel's table
        # The timeline: sockets whose life changed since the last drain, and those
        # that ended (TIME_WAIT included). Bounded: past the cap the oldest ended ones
        # are dropped, and counted.
        self.keep_lifecycles = keep_lifecycles  # only when a store drains them
        self.next_uid = 1
        self._changed: dict[int, SocketEntry] = {}
        self._ended: list[bytes] = []  # lifecycle.pack_ended
        # Ended lives waiting for the store, packed: past this (about twenty seconds of
        # the churn ceiling, ~170 MB) the oldest are dropped and counted, so a store that cannot
        # keep up costs timeline rows, not memory.
        self.max_pending_lifecycles = min(4 * max_sockets, PENDING_LIVES_MAX)
        self.lifecycles_dropped = 0
        # (first old state, first new state, later states) -> _plan(): lives follow few paths.
        self._plans: dict[tuple[int, int, bytes], tuple | None] = {}

    # -- writer side -------------------------------------------------------------

    def apply(self, ev: Event) -> int:
        """Applies one event; returns the nanoseconds the socket spent in its
        previous state, or -1 when that is not known."""
        self.events += 1
        return self._apply(ev)

    def _apply(self, ev: Event) -> int:
        # The hot path: up to ~290,000 events/s at the machine's churn ceiling, so it
        # works on locals and inlines what a helper would cost a call for
        # (tests/bench/pipeline.py measures it).
        ts, sk, saddr, daddr, pid, sport, dport, svc, _fam, kind, ev_old, new, role, flags, comm = ev
        if kind != _STATE:
            self._reset(ev)
            return -1
        counts = self.counts
        entry = self.sockets.get(sk)
        if entry is not None and ev_old in _LISTEN_OR_CLOSE and new != _CLOSE:
            # A socket born at the address of one the table holds: that one's end was
            # never seen (the program was skipped, or not run on top of a blind thread).
            self._vanished(entry, ts)
            entry = None
        if entry is None and self._baseline_by_conn:
            entry = self._adopt(sk, (saddr, sport, daddr, dport))
        if entry is None:
            spent = -1
            entry = SocketEntry(ev)
            entry.uid = self.next_uid
            self.next_uid += 1
            old = ev_old
            if new != _CLOSE:
                self._insert(entry)
        else:
            old = entry.state
            if ts == entry.since_ns and new == old:
                # The twin of the last transition of a life user space took while the
                # program appended it (bpf/tcpstates.bpf.c append): already applied.
                return -1
            key = (entry.port, old)
            counts[key] -= 1
            # A missed transition (the kernel skips the program now and then) leaves the
            # model in another state than the event left: how long is then unknown.
            if entry.age_known and old == ev_old:
                spent = ts - entry.since_ns
                h = self.state_durations.get(key)
                if h is None:
                    h = self.state_durations[key] = Histogram()
                h.counts[bisect_left(_BOUNDS_NS, spent)] += 1
                h.sum_ns += spent
                if spent > self._floors[old]:
                    self._count_stuck(entry, spent)
            else:
                spent = -1
            entry.state = new
            entry.since_ns = ts
            entry.age_known = True
            entry.port = svc
            entry.role = role
            entry.sport = sport  # 0 until connect() has bound the socket
            if saddr != entry.saddr:
                entry.saddr = _intern(saddr)
            if pid:
                entry.pid = pid
                if comm != entry.comm:
                    entry.comm = _intern(comm)
            entry.flags = flags
            if new == _CLOSE:  # CLOSE ends the life (or hands it to TIME_WAIT)
                del self.sockets[sk]
            else:
                entry.history += (new, ts)
                if old == _SYN_SENT:
                    self._connected((saddr, sport, daddr, dport))
        if new == _CLOSE:
            if old in _ACTIVE_CLOSE and not entry.reset:
                self._enter_timewait(entry)
            else:
                self._end(entry, ts)
            if old == _SYN_SENT:
                key = (svc, "refused" if entry.reset else "timeout")
                self.connect_failures[key] = self.connect_failures.get(key, 0) + 1
            if entry.opened and entry.role in _CONNECTION_ROLES:
                self._observe(self.connection_durations, (svc, entry.role), ts - entry.first_ns)
        else:
            key = (svc, new)
            counts[key] = counts.get(key, 0) + 1
            if self.keep_lifecycles:
                self._changed[entry.uid] = entry
        return spent

    def _vanished(self, entry: SocketEntry, now_ns: int) -> None:
        """Ends a tracked socket the kernel no longer has (counted as gone)."""
        del self.sockets[entry.sk]
        self.counts[(entry.port, entry.state)] -= 1
        if self._baseline_by_conn.get(entry.conn) is entry:
            del self._baseline_by_conn[entry.conn]
        self.live_removed += 1
        self._end(entry, now_ns)

    def _take_uid(self) -> int:
        uid = self.next_uid
        self.next_uid += 1
        return uid

    def _end(self, entry: SocketEntry, end_ns: int) -> None:
        """The socket's life is over: it goes to the timeline once more, closed."""
        entry.ended_ns = end_ns
        if not self.keep_lifecycles:
            return
        self._changed.pop(entry.uid, None)
        if entry.uid:  # 0: never a life of its own
            e = entry
            self._pend(pack_ended((e.uid, e.netns, e.family, e.saddr, e.sport, e.daddr, e.dport, e.role, e.port,
                                   e.pid, e.comm, e.history, end_ns)))

    def _pend(self, packed: bytes) -> None:
        ended = self._ended
        if len(ended) >= self.max_pending_lifecycles:
            dropped = len(ended) // 4  # the store has not kept up: drop the oldest quarter
            del ended[:dropped]
            self.lifecycles_dropped += dropped
        ended.append(packed)

    @staticmethod
    def _observe(table: dict, key: tuple, ns: int) -> None:
        h = table.get(key)
        if h is None:
            h = table[key] = Histogram()
        h.observe(ns)

    def apply_batch(self, batch: list[Event]) -> None:
        apply = self._apply
        with self.lock:
            self.events += len(batch)
            for ev in batch:
                apply(ev)

    def apply_records(self, batch: list[Record]) -> None:
        """Applies the kernel's records (tracer/core/record.py): a record of one event
        as that event, a young socket's whole life at once."""
        apply, life = self._apply, self._apply_life
        n = 0
        with self.lock:
            for rec in batch:
                if rec[MORE_AT]:
                    n += life(rec)
                else:
                    n += 1
                    apply(rec[:MORE_AT])
            self.events += n

    def _apply_life(self, rec: Record) -> int:
        """The events of one record, with the effect of applying them one by one. A
        life born and ended in the record (most of them, at high churn) takes a short
        path: its socket never enters the table. Returns the events applied."""
        more = rec[MORE_AT]
        plan = self._plans.get((rec[10], rec[11], rec[MORE_STATE_AT]), False)
        if plan is False:
            plan = self._plans[(rec[10], rec[11], rec[MORE_STATE_AT])] = _plan(rec[10], rec[11], rec[MORE_STATE_AT], more)
        sockets = self.sockets
        if (plan is None or rec[9] != _STATE or rec[12] not in _CONNECTION_ROLES or rec[1] in sockets
                or len(sockets) >= self.max_sockets
                or self._baseline_by_conn and (rec[2], rec[5], rec[3], rec[6]) in self._baseline_by_conn):
            return self._apply_events(rec)
        visited, connect_at, to_timewait, failed, states = plan
        stamps = rec[MORE_TS_AT:MORE_TS_AT + more]
        born, died = rec[0], stamps[-1]
        if died - born > self._min_floor:  # long enough to have been stuck on the way
            floors, before = self._floors, born
            for old, ts in zip(visited, stamps):
                if ts - before > floors[old]:  # the long path counts it
                    return self._apply_events(rec)
                before = ts
        svc = rec[7]
        counts, durations = self.counts, self.state_durations
        before = born
        for i, old in enumerate(visited):
            ts = stamps[i]
            spent = ts - before
            key = (svc, old)
            h = durations.get(key)
            if h is None:
                h = durations[key] = Histogram()
                counts.setdefault(key, 0)
            h.counts[bisect_left(_BOUNDS_NS, spent)] += 1
            h.sum_ns += spent
            before = ts
        uid = self.next_uid
        self.next_uid += 1
        if connect_at >= 0 and self._timewait_by_conn:
            self._connected((rec[2], rec[5], rec[3], rec[6]))
        if to_timewait:  # the TIME_WAIT model needs the socket
            entry = SocketEntry(rec[:MORE_AT])
            entry.uid = uid
            history = entry.history
            for i in range(1, more):
                history += (visited[i], stamps[i - 1])
            entry.state = _CLOSE
            entry.since_ns = died
            self._enter_timewait(entry)
        elif self.keep_lifecycles:  # straight to the timeline, packed as _end packs it
            self._pend(pack_spans(uid, 0, rec[8], rec[2], rec[5], rec[3], rec[6], rec[12], svc, rec[4], rec[14],
                                  states, (born, *stamps[:-1]), died))
        if failed:
            key = (svc, "timeout")
            self.connect_failures[key] = self.connect_failures.get(key, 0) + 1
        self._observe(self.connection_durations, (svc, rec[12]), died - born)
        return 1 + more

    def _apply_events(self, rec: Record) -> int:
        """The long path: the record's events one by one."""
        events = events_of(rec)
        for ev in events:
            self._apply(ev)
        return len(events)

    def expire(self, now_ns: int) -> None:
        """Ends the TIME_WAITs whose time is up."""
        tw = self.timewait
        horizon = now_ns - self.timewait_ns
        ends = self._extended_ends
        if (not tw or tw[0].since_ns > horizon) and (not ends or ends[0][0] > now_ns):
            return
        with self.lock:
            while tw and tw[0].since_ns <= horizon:
                entry = tw.popleft()
                if not entry.expires_ns:  # the kernel's timer decides an extended one's end
                    self._leave_timewait(entry, entry.since_ns + self.timewait_ns)
            extended = self._extended
            while ends and ends[0][0] <= now_ns:
                at, _, entry = heappop(ends)
                if entry.expires_ns == at and extended.get(entry.conn) is entry:
                    self._leave_timewait(entry, at)

    def _extend(self, entry: SocketEntry, expires_ns: int) -> None:
        """The kernel's timer ends this TIME_WAIT, at ``expires_ns``."""
        entry.expires_ns = expires_ns
        extended, ends = self._extended, self._extended_ends
        extended[entry.conn] = entry
        heappush(ends, (expires_ns, next(self._tie), entry))
        if len(ends) > 2 * len(extended) + _FIFO_SLACK:  # ends that no longer hold keep their entries
            self._extended_ends = [(e.expires_ns, next(self._tie), e) for e in extended.values()]
            heapify(self._extended_ends)

    def _insert(self, entry: SocketEntry) -> None:
        sockets = self.sockets
        if len(sockets) >= self.max_sockets:
            oldest = sockets.pop(next(iter(sockets)))
            self.counts[(oldest.port, oldest.state)] -= 1
            self._changed.pop(oldest.uid, None)  # no longer followed: its record stays as last written
            if self._baseline_by_conn.get(oldest.conn) is oldest:
                del self._baseline_by_conn[oldest.conn]
            self.evicted += 1
        sockets[entry.sk] = entry
        self.counts.setdefault((entry.port, entry.state), 0)

    def _connected(self, conn: Conn) -> None:
        """An active opener's connection is complete only after connect() bound its port."""
        if self._timewait_by_conn:
            # tcp_tw_reuse: a connect() may take over a TIME_WAIT of the same connection.
            earlier = self._timewait_by_conn.get(conn)
            if earlier is not None:
                self._cancel_timewait(earlier, earlier.since_ns)
                self.timewait_reused += 1
        if self._baseline_by_conn:
            # Opened while the baseline was read: the table had it too.
            twin = self._baseline_by_conn.pop(conn, None)
            if twin is not None:
                del self.sockets[twin.sk]
                self.counts[(twin.port, twin.state)] -= 1
                self.baseline_sockets -= 1
                self._changed.pop(twin.uid, None)
                twin.uid = 0  # never a life of its own: the event's socket is the same one

    def _adopt(self, sk: int, conn: Conn) -> SocketEntry | None:
        """The first event of a socket loaded from the kernel's table: it gets its identity."""
        entry = self._baseline_by_conn.pop(conn, None)
        if entry is not None:
            del self.sockets[entry.sk]
            entry.sk = sk
            self.sockets[sk] = entry
        return entry

    def _enter_timewait(self, entry: SocketEntry) -> None:
        conn = entry.conn
        earlier = self._timewait_by_conn.get(conn)
        if earlier is not None:  # the kernel holds one TIME_WAIT per connection
            self._cancel_timewait(earlier, entry.since_ns)
            self.timewait_reused += 1
        while self.timewait_now >= self.max_sockets:
            if self.timewait:
                oldest = self.timewait.popleft()
                if oldest.state != _TIME_WAIT or oldest.expires_ns:
                    continue  # cancelled, or in _extended
            else:
                oldest = next(iter(self._extended.values()))
            self.evicted += 1
            self._cancel_timewait(oldest, entry.since_ns)
        if entry.state != _TIME_WAIT:  # a full socket's close (kernel-found ones arrive in it)
            entry.history += (_TIME_WAIT, entry.since_ns)
        entry.state = _TIME_WAIT
        entry.stuck_state = 0
        if self.keep_lifecycles:
            self._changed[entry.uid] = entry
        tw = self.timewait
        tw.append(entry)
        if len(tw) > 2 * self.timewait_now + _FIFO_SLACK:
            # An ended TIME_WAIT (taken over by a new connection, reset, reconciled) leaves
            # the FIFO only at its front, a TIME_WAIT length later: churn that reuses its
            # ports would keep a minute of them, a gigabyte at this machine's ceiling.
            self.timewait = deque(e for e in tw if e.state == _TIME_WAIT)
        self._timewait_by_conn[conn] = entry
        key = (entry.port, _TIME_WAIT)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.timewait_now += 1
        self.timewait_entered += 1
        self.timewait_entered_by_port[entry.port] = self.timewait_entered_by_port.get(entry.port, 0) + 1

    def _timewait_age(self, entry: SocketEntry, now_ns: int) -> int:
        """A TIME_WAIT the model ends on schedule is never older than the TIME_WAIT
        length, however late the daemon gets round to ending it."""
        age = now_ns - entry.since_ns
        return age if entry.expires_ns else min(age, self.timewait_ns)

    def _leave_timewait(self, entry: SocketEntry, now_ns: int) -> None:
        if entry.state != _TIME_WAIT:  # cancelled meanwhile
            return
        spent = self._timewait_age(entry, now_ns)
        if entry.age_known:
            self._observe(self.state_durations, (entry.port, _TIME_WAIT), spent)
            if spent > self._stuck_floor.get(_TIME_WAIT, spent):
                self._count_stuck(entry, spent)
        self._cancel_timewait(entry, now_ns)

    def _cancel_timewait(self, entry: SocketEntry, end_ns: int) -> None:
        """Ends a TIME_WAIT; a FIFO entry leaves the FIFO when it reaches the front."""
        self._end(entry, end_ns)
        self.counts[(entry.port, _TIME_WAIT)] -= 1
        self.timewait_now -= 1
        entry.state = _CLOSE
        conn = entry.conn
        if self._timewait_by_conn.get(conn) is entry:
            del self._timewait_by_conn[conn]
        if self._extended.get(conn) is entry:
            del self._extended[conn]

    def _reset(self, ev: Event) -> None:
        entry = self.sockets.get(ev[1])
        if entry is not None:
            entry.reset = True
            return
        entry = self._timewait_by_conn.get((ev[2], ev[5], ev[3], ev[6]))
        if entry is not None:
            self._cancel_timewait(entry, ev[0])
            self.timewait_cancelled += 1

    def _count_stuck(self, entry: SocketEntry, age_ns: int) -> None:
        """Counts a socket once per visit to a state, when its age passes the state's threshold."""
        rule = self.rules.rule(entry.port, entry.state) if self.rules else None
        if rule is not None and age_ns > rule.threshold_ns and entry.stuck_state != entry.state:
            entry.stuck_state = entry.state
            key = (entry.port, entry.state)
            self.stuck_total[key] = self.stuck_total.get(key, 0) + 1

    # -- the kernel's socket table -----------------------------------------------

    def load_baseline(self, kernel: Iterable[KernelSocket], now_ns: int,
                      ephemeral: range = range(32768, 61000)) -> int:
        """Loads the sockets that exist before any event names them. Their age is
        known only from now on. Their role is inferred, since nobody saw them open: a
        socket on a port something listens on is the passive side, and so is one whose
        local port is outside the ephemeral range while its peer's is inside it (its
        listener may be gone); any other is the active opener."""
        kernel = list(kernel)
        listening = {k.conn[1] for k in kernel if k.state == _LISTEN}
        loaded = 0
        with self.lock:
            for k in kernel:
                lport, rport = k.conn[1], k.conn[3]
                if k.state == _LISTEN:
                    role, port = Role.LISTENER.value, lport
                elif lport in listening or (lport not in ephemeral and rport in ephemeral):
                    role, port = Role.PASSIVE.value, lport
                else:
                    role, port = Role.ACTIVE.value, rport
                if k.state == _TIME_WAIT:
                    if k.conn not in self._timewait_by_conn:
                        self._add_kernel_timewait(k, now_ns, role, port)
                        loaded += 1
                    continue
                if k.state == _CLOSE:
                    continue
                self._synthetic_sk -= 1
                entry = _entry_from_kernel(k, now_ns, role, port)
                entry.sk = self._synthetic_sk
                entry.uid = self._take_uid()
                if self.keep_lifecycles:
                    self._changed[entry.uid] = entry
                self._insert(entry)
                self.counts[(port, k.state)] += 1
                self._baseline_by_conn[k.conn] = entry
                loaded += 1
            self.baseline_sockets += loaded
        return loaded

    def _add_kernel_timewait(self, k: KernelSocket, now_ns: int, role: int, port: int) -> SocketEntry:
        # Without a re-arm the TIME_WAIT began (length - time left) ago; that is a
        # lower bound of its age, hence age_known stays False.
        since = self._kernel_began(k, now_ns)
        entry = _entry_from_kernel(k, since, role, port)
        entry.uid = self._take_uid()
        entry.expires_ns = now_ns + k.expires_ns
        self._enter_timewait(entry)
        self._extend(entry, entry.expires_ns)
        return entry

    def _kernel_began(self, k: KernelSocket, at_ns: int) -> int:
        """When a TIME_WAIT the kernel's table showed at ``at_ns`` began, or was last re-armed."""
        return at_ns - max(0, self.timewait_ns - k.expires_ns)

    def reconcile(self, kernel: Mapping[Conn, KernelSocket], dumped_at_ns: int,
                  grace_ns: int) -> tuple[int, int]:
        """Makes the model agree with the kernel's socket table, read at ``dumped_at_ns``.

        ``kernel`` holds the TIME_WAIT sockets and those in RECONCILED_STATES, by
        connection. The model misses what no tracepoint shows: a
        TIME_WAIT killed early (a reset from a peer's listener, RFC 1337), or kept
        longer (a retransmitted FIN re-arms its timer). Only TIME_WAITs older than
        ``grace_ns`` (and not about to end) are judged, so events still on their way
        are no differences. Full sockets in RECONCILED_STATES the kernel no longer
        has are dropped, and those it has in another state take that state (a
        transition was missed). Every socket found gets its network namespace.
        Returns (TIME_WAITs removed, TIME_WAITs added).
        """
        removed = added = 0
        # A reader running behind has not applied the latest closes: a connection that
        # reused a TIME_WAIT's ports shows in the table as that TIME_WAIT re-armed.
        horizon = min(dumped_at_ns, self.seen_until_ns or dumped_at_ns) - grace_ns
        ending = dumped_at_ns - self.timewait_ns + grace_ns
        with self.lock:
            for conn, entry in list(self._timewait_by_conn.items()):
                k = kernel.get(conn)
                if k is None or k.state != _TIME_WAIT:
                    if entry.since_ns < horizon and (entry.expires_ns or entry.since_ns > ending):
                        self._cancel_timewait(entry, dumped_at_ns)
                        removed += 1
                    continue
                entry.netns = k.netns
                model_left = (entry.expires_ns or entry.since_ns + self.timewait_ns) - dumped_at_ns
                began = self._kernel_began(k, dumped_at_ns)  # or was last re-armed
                if k.expires_ns > model_left + _REARM_SLACK_NS and began < horizon:
                    if not entry.expires_ns:
                        self.timewait_rearmed += 1
                    self._extend(entry, dumped_at_ns + k.expires_ns)
            for conn, k in kernel.items():
                if k.state == _TIME_WAIT and conn not in self._timewait_by_conn:
                    since = self._kernel_began(k, dumped_at_ns)
                    if since < horizon:
                        self._add_kernel_timewait(k, dumped_at_ns, Role.UNKNOWN.value, conn[3])
                        added += 1
            self._reconcile_live(kernel, dumped_at_ns, horizon)
        self.timewait_reconciled_removed += removed
        self.timewait_reconciled_added += added
        return removed, added

    def _reconcile_live(self, kernel: Mapping[Conn, KernelSocket], dumped_at_ns: int, horizon: int) -> None:
        """Full sockets in the states the table was read for: a missed transition (the
        kernel skips the program now and then) must not leave a socket in a state it
        has left, or in the table after it is gone. Caller holds the lock."""
        counts = self.counts
        for entry in list(self.sockets.values()):
            if entry.state not in RECONCILED_STATES or entry.since_ns >= horizon or not entry.sport:
                continue  # not read, too young to judge, or connect() has not bound it yet
            k = kernel.get(entry.conn)
            if k is not None and k.state == entry.state:
                entry.netns = k.netns
                continue
            if k is None:
                self._vanished(entry, dumped_at_ns)
            else:
                counts[(entry.port, entry.state)] -= 1
                entry.state = k.state
                entry.since_ns = dumped_at_ns
                entry.history += (k.state, dumped_at_ns)
                if self.keep_lifecycles:
                    self._changed[entry.uid] = entry
                entry.age_known = False
                entry.netns = k.netns
                key = (entry.port, k.state)
                counts[key] = counts.get(key, 0) + 1
                self.live_corrected += 1

    # -- reader side -------------------------------------------------------------

    def in_timewait(self, ev: Event) -> bool:
        """Whether the connection of this event is now modelled in TIME_WAIT."""
        return (ev[2], ev[5], ev[3], ev[6]) in self._timewait_by_conn

    def snapshot(self) -> dict[tuple[int, int], int]:
        """(service port, state) -> sockets now in that state, TIME_WAIT included."""
        with self.lock:
            return dict(self.counts)

    def scan(self, now_ns: int) -> Report:
        """Finds the sockets stuck now and the oldest socket of each (port, state).

        The copy of the table is taken under the lock; the scan itself runs outside
        it, so the writer waits only for the copy.
        """
        with self.lock:
            live = list(self.sockets.values())
            timewait = list(self._timewait_by_conn.values())
            ports = {port for port, _ in self.counts}
        stuck: list[Stuck] = []
        oldest: dict[tuple[int, int], int] = {}
        counts = {(port, state): 0 for port in ports for state in self._stuck_floor}
        rules = self.rules
        for entry in live + timewait:
            state = entry.state
            if state == _CLOSE:
                continue
            age = self._timewait_age(entry, now_ns) if state == _TIME_WAIT else now_ns - entry.since_ns
            key = (entry.port, state)
            if age > oldest.get(key, -1):
                oldest[key] = age
            if state in self._stuck_floor and age > self._stuck_floor[state]:
                rule = rules.rule(entry.port, state)
                if age > rule.threshold_ns:
                    stuck.append(Stuck(entry, rule, age))
                    counts[key] = counts.get(key, 0) + 1
        if stuck:
            with self.lock:
                for s in stuck:
                    if s.entry.state == s.rule.state.value:
                        self._count_stuck(s.entry, s.age_ns)
        stuck.sort(key=lambda s: -s.age_ns)
        return Report(now_ns, stuck, counts, oldest)

    def drain_raw(self, born_before_ns: int | None = None, limit: int | None = None) -> list[RawLife]:
        """The lives that changed since the last drain, as raw tuples (lifecycle.RawLife):
        open ones as they are now, ended ones for the last time. With ``born_before_ns``,
        open lives born at or after it wait for a later drain: most connections end
        within seconds, and one that ends before it is drained is written once instead
        of twice. With ``limit``, at most that many, the ended first (oldest first); the
        rest wait for the next call. Only the lock holds the containers' hand-over (and
        the sorting out of what waits); a history is copied in one step (the writer may
        append to it meanwhile)."""
        with self.lock:
            ended = self._ended
            if limit is not None and len(ended) > limit:
                ended, self._ended = ended[:limit], ended[limit:]
            else:
                self._ended = []
            room = None if limit is None else limit - len(ended)
            changed, self._changed = self._changed, {}
            if born_before_ns is None and room is None:
                changed = list(changed.values())
            else:
                take: list[SocketEntry] = []
                for uid, e in changed.items():
                    if (born_before_ns is not None and e.first_ns >= born_before_ns) or \
                            (room is not None and len(take) >= room):
                        self._changed[uid] = e
                    else:
                        take.append(e)
                changed = take
        out = [(e.uid, e.netns, e.family, e.saddr, e.sport, e.daddr, e.dport, e.role, e.port, e.pid, e.comm,
                tuple(e.history), None) for e in changed if e.uid]
        out += [unpack_ended(packed) for packed in ended]
        return out

    def pending_ended(self) -> int:
        """Ended lives waiting for the store."""
        return len(self._ended)

    def drain_lifecycles(self, wall: Callable[[int], float]) -> list[Lifecycle]:
        """drain_raw as Lifecycles (the daemon hands the raw ones to the store)."""
        return [from_raw(r, wall) for r in self.drain_raw()]

    def stuck_totals(self) -> dict[tuple[int, int], int]:
        with self.lock:
            return dict(self.stuck_total)

    def outcomes(self) -> "Outcomes":
        """Copies of the histograms and outcome counters, for a scrape."""
        with self.lock:
            return Outcomes(
                state_durations={k: h.copy() for k, h in self.state_durations.items()},
                connection_durations={k: h.copy() for k, h in self.connection_durations.items()},
                timewait_entered=dict(self.timewait_entered_by_port),
                connect_failures=dict(self.connect_failures),
            )

    def stats(self) -> TrackerStats:
        with self.lock:
            return TrackerStats(
                events=self.events,
                sockets=len(self.sockets),
                timewait=self.timewait_now,
                evicted=self.evicted,
                timewait_entered=self.timewait_entered,
                timewait_cancelled_by_reset=self.timewait_cancelled,
                timewait_reused=self.timewait_reused,
                timewait_reconciled_removed=self.timewait_reconciled_removed,
                timewait_reconciled_added=self.timewait_reconciled_added,
                timewait_rearmed=self.timewait_rearmed,
                live_removed=self.live_removed,
                live_corrected=self.live_corrected,
                lifecycles_dropped=self.lifecycles_dropped,
                baseline_sockets=self.baseline_sockets,
            )
