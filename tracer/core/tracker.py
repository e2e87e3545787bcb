"""The tracker: applies the kernel's records to the parts it owns, under one lock.

- the socket table (tracer/core/sockets.py): each full socket's state and identity;
- the TIME_WAIT model (tracer/core/timewait.py): what the tracepoint never reports;
- the outcomes (tracer/core/outcomes.py): histograms and counters by service port;
- the journal (tracer/core/journal.py): the lives the timeline store takes.

One writer applies records; readers take snapshots under the same lock. A record
is one transition, or a young socket's whole life (tracer/core/record.py). Most
lives at high churn are born and closed in one record, with no reset and nothing
stuck on the way: those runs take the short path, whole runs at once with numpy,
and their sockets never enter the table. Everything else goes one event at a time
through ``_apply``, with the same result (tests/unit/test_life_records.py).
What no tracepoint shows comes from the kernel's socket table: ``reconcile``
corrects the model and names namespaces, ``load_baseline`` brings in the sockets
that existed before the daemon started.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from tracer.core.detector import WATCHED, Report, Rules, Stuck
from tracer.core.journal import PENDING_LIVES_MAX, Journal
from tracer.core.kernel_socket import Conn, KernelSocket
from tracer.core.outcomes import BOUNDS_NS, DURATION_BUCKETS_S, Histogram, Outcomes, OutcomesSnapshot
from tracer.core.record import MORE, RECORD_SIZE, Event, Record, RecordBatch, events_of
from tracer.core.sockets import SocketEntry, SocketTable, intern
from tracer.core.states import ACTIVE_CLOSE_STATES, EventKind, Role, TcpState
from tracer.core.timewait import EXPIRES, NETNS, SINCE, TimeWait, TimeWaitModel

__all__ = ["DURATION_BUCKETS_S", "Histogram", "OutcomesSnapshot", "PENDING_LIVES_MAX", "RECONCILED_STATES",
           "SocketEntry", "Tracker", "TrackerStats"]

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
_LISTEN_OR_CLOSE = frozenset({TcpState.CLOSE.value, TcpState.LISTEN.value})
_CONNECTION_ROLES = frozenset({Role.ACTIVE.value, Role.PASSIVE.value})
_SHIFTS = np.arange(MORE, dtype=np.uint64) * np.uint64(8)


@dataclass(frozen=True)
class Plan:
    """How a life born and closed in one record goes: the states it visited before
    CLOSE, whether connect() completed in it (the transition out of SYN_SENT), whether
    the close is an orderly active one that leaves a TIME_WAIT, and whether connect()
    failed (SYN_SENT -> CLOSE)."""

    visited: tuple[int, ...]
    connected: bool
    to_timewait: bool
    failed: bool


def _plan(first_old: int, first_new: int, codes: bytes, more: int) -> Plan | None:
    """The plan of a record the short path takes (opened from CLOSE or a listener, no
    resets, CLOSE once and last), or None."""
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
    connected = any(visited[i - 1] == _SYN_SENT for i in range(1, len(visited)))
    return Plan(visited, connected, visited[-1] in _ACTIVE_CLOSE, visited[-1] == _SYN_SENT)


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
    """Applies records to the socket table and keeps per-(port, state) counts."""

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
        # (service port, state) -> sockets now in it, the table's and the TIME_WAIT model's.
        self.counts: dict[tuple[int, int], int] = {}
        self.outcome = Outcomes()
        self.journal = Journal(keep_lifecycles, min(4 * max_sockets, PENDING_LIVES_MAX))
        self.table = SocketTable(max_sockets, self.counts)
        self.tw = TimeWaitModel(timewait_ns, max_sockets, self.counts, self.outcome, self.journal,
                                self._stuck_on_leaving)
        self.events = 0
        # The kernel's clock up to which the reader has applied what the program sent
        # (0: not known; the daemon's event reader keeps it). The kernel's socket table
        # is judged only that far, less a grace: beyond, the model may not know yet.
        self.seen_until_ns = 0
        self.timewait_reconciled_removed = 0
        self.timewait_reconciled_added = 0
        self.timewait_rearmed = 0
        # Plan key (tracer.core.record more_state bytes | oldstate << 56 | newstate << 60) ->
        # Plan or None: lives follow few paths.
        self._plans: dict[int, Plan | None] = {}

    # The timeline's ids continue from the store's (set once at start).
    @property
    def next_uid(self) -> int:
        return self.journal.next_uid

    @next_uid.setter
    def next_uid(self, uid: int) -> None:
        self.journal.next_uid = uid

    @property
    def max_pending_lifecycles(self) -> int:
        return self.journal.max_pending

    # -- writer side: one event at a time ----------------------------------------

    def apply(self, ev: Event) -> int:
        """Applies one event; returns the nanoseconds the socket spent in its
        previous state, or -1 when that is not known."""
        with self.lock:
            self.events += 1
            return self._apply(ev)

    def apply_batch(self, batch: Iterable[Event]) -> None:
        apply = self._apply
        with self.lock:
            for ev in batch:
                self.events += 1
                apply(ev)

    def _apply(self, ev: Event) -> int:
        # The long path: every event the short path does not take, one at a time. It
        # works on locals and inlines what a helper would cost a call for.
        ts, sk, saddr, daddr, pid, sport, dport, svc, _fam, kind, ev_old, new, role, flags, comm = ev
        if kind != _STATE:
            self._reset(ev)
            return -1
        counts, table = self.counts, self.table
        sockets = table.sockets
        entry = sockets.get(sk)
        if entry is not None and ev_old in _LISTEN_OR_CLOSE and new != _CLOSE:
            # A socket born at the address of one the table holds: that one's end was
            # never seen (the program was skipped, or not run on top of a blind thread).
            self._vanished(entry, ts)
            entry = None
        if entry is None and table.baseline:
            entry = table.adopt(sk, (saddr, sport, daddr, dport))
        if entry is None:
            spent = -1
            entry = SocketEntry(ev)
            entry.uid = self.journal.take_uid()
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
                durations = self.outcome.state_durations
                h = durations.get(key)
                if h is None:
                    h = durations[key] = Histogram()
                h.counts[bisect_left(BOUNDS_NS, spent)] += 1
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
                entry.saddr = intern(saddr)
            if pid:
                entry.pid = pid
                if comm != entry.comm:
                    entry.comm = intern(comm)
            entry.flags = flags
            if new == _CLOSE:  # CLOSE ends the life (or hands it to TIME_WAIT)
                del sockets[sk]
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
                self.outcome.connect_failed(svc, "refused" if entry.reset else "timeout")
            if entry.opened and entry.role in _CONNECTION_ROLES:
                self.outcome.observe(self.outcome.connection_durations, (svc, entry.role), ts - entry.first_ns)
        else:
            key = (svc, new)
            counts[key] = counts.get(key, 0) + 1
            if self.journal.keep:
                self.journal.changed[entry.uid] = entry
        return spent

    def _insert(self, entry: SocketEntry) -> None:
        evicted = self.table.insert(entry)
        if evicted is not None:
            self.journal.changed.pop(evicted.uid, None)  # no longer followed: its record stays as last written

    def _vanished(self, entry: SocketEntry, now_ns: int) -> None:
        """Ends a tracked socket the kernel no longer has (counted as gone)."""
        self.table.remove(entry)
        self._end(entry, now_ns)

    def _end(self, entry: SocketEntry, end_ns: int) -> None:
        """The socket's life is over: it goes to the timeline once more, closed."""
        entry.ended_ns = end_ns
        journal = self.journal
        if not journal.keep:
            return
        journal.changed.pop(entry.uid, None)
        if entry.uid:  # 0: never a life of its own
            from tracer.core.lifecycle import pack_ended

            journal.pend(pack_ended(entry.raw_life(end_ns)))

    def _connected(self, conn: Conn) -> None:
        """An active opener's connection is complete only after connect() bound its port."""
        tw = self.tw
        if tw.by_conn:
            # tcp_tw_reuse: a connect() may take over a TIME_WAIT of the same connection.
            earlier = tw.by_conn.get(conn)
            if earlier is not None:
                tw.cancel(earlier, earlier[SINCE])
                tw.reused += 1
        if self.table.baseline:
            # Opened while the baseline was read: the table had it too.
            twin = self.table.drop_twin(conn)
            if twin is not None:
                self.journal.changed.pop(twin.uid, None)
                twin.uid = 0  # never a life of its own: the event's socket is the same one

    def _enter_timewait(self, entry: SocketEntry) -> TimeWait:
        """A socket of the table closed actively: its connection enters TIME_WAIT."""
        if entry.state != _TIME_WAIT:  # a full socket's close (kernel-found ones arrive in it)
            entry.history += (_TIME_WAIT, entry.since_ns)
        entry.state = _TIME_WAIT
        tw = TimeWait((entry.conn, entry.since_ns, entry.port, entry.uid, entry, entry.netns, 0, 0, _TIME_WAIT,
                       entry.age_known, entry.first_ns))
        self.tw.enter(tw)
        return tw

    def _reset(self, ev: Event) -> None:
        entry = self.table.sockets.get(ev[1])
        if entry is not None:
            entry.reset = True
            return
        self.tw.reset((ev[2], ev[5], ev[3], ev[6]), ev[0])

    def _count_stuck(self, entry: SocketEntry | TimeWait, age_ns: int) -> None:
        """Counts a socket once per visit to a state, when its age passes the state's threshold."""
        rule = self.rules.rule(entry.port, entry.state) if self.rules else None
        if rule is not None and age_ns > rule.threshold_ns and entry.stuck_state != entry.state:
            entry.stuck_state = entry.state
            self.outcome.stuck(entry.port, entry.state)

    def _stuck_on_leaving(self, entry: TimeWait, age_ns: int) -> None:
        if age_ns > self._floors[_TIME_WAIT]:
            self._count_stuck(entry, age_ns)

    # -- writer side: the kernel's records ---------------------------------------

    def apply_records(self, batch: Sequence[Record] | RecordBatch) -> None:
        """Applies the kernel's records (tracer/core/record.py): a record of one event
        as that event, a young socket's whole life at once; runs of lives the short
        path takes at once."""
        if not isinstance(batch, RecordBatch):
            batch = RecordBatch.of(batch)
        n = len(batch)
        if not n:
            return
        a = batch.array
        with self.lock:
            plans, which = self._plans_of(a)
            short = self._short_candidates(a, plans, which)
            long = np.flatnonzero(~short).tolist()
            start = applied = 0
            for i in long + [n]:
                if i > start:
                    applied += self._short_runs(batch, plans, which, start, i)
                if i < n:
                    applied += self._apply_events(batch[i])
                start = i + 1
            self.events += applied

    def _apply_events(self, rec: Record) -> int:
        """The long path: the record's events one by one."""
        events = events_of(rec)
        for ev in events:
            self._apply(ev)
        return len(events)

    def _plans_of(self, a: np.ndarray) -> tuple[list[Plan | None], np.ndarray]:
        """The distinct plans of a batch, and which one each record follows."""
        key = ((a["more_state"].astype(np.uint64) << _SHIFTS).sum(axis=1, dtype=np.uint64)
               | a["oldstate"].astype(np.uint64) << np.uint64(56) | a["newstate"].astype(np.uint64) << np.uint64(60))
        keys, which = np.unique(key, return_inverse=True)
        plans = []
        for k in keys.tolist():
            plan = self._plans.get(k, False)
            if plan is False:
                codes = k.to_bytes(8, "little")[:MORE].rstrip(b"\0")
                plan = self._plans[k] = _plan(k >> 56 & 15, k >> 60, codes, len(codes))
            plans.append(plan)
        return plans, which.reshape(-1)

    def _short_candidates(self, a: np.ndarray, plans: list[Plan | None], which: np.ndarray) -> np.ndarray:
        """Records the short path may take, as far as they alone tell: a life opened
        and closed in the record along a plan, no reset, nothing stuck on the way."""
        more = a["more"]
        role = a["role"]
        ok = np.array([p is not None for p in plans])[which]
        ok &= (more > 0) & (a["kind"] == _STATE) & ((role == Role.ACTIVE.value) | (role == Role.PASSIVE.value))
        ok &= np.count_nonzero(a["more_state"], axis=1) == more
        if not ok.any():
            return ok
        # Long enough to have been stuck on the way: the long path counts it.
        died = a["more_ts"][np.arange(len(a)), np.maximum(more.astype(np.int64) - 1, 0)]
        long_lived = ok & (died.astype(np.int64) - a["ts_ns"].astype(np.int64) > self._min_floor)
        for i in np.flatnonzero(long_lived).tolist():
            plan = plans[which[i]]
            before = int(a["ts_ns"][i])
            for old, ts in zip(plan.visited, a["more_ts"][i].tolist()):
                if ts - before > self._floors[old]:
                    ok[i] = False
                    break
                before = ts
        return ok

    def _short_runs(self, batch: RecordBatch, plans: list[Plan | None], which: np.ndarray,
                    start: int, end: int) -> int:
        """Records [start, end) are short-path candidates: those the table does not
        hold (nor its baseline) go at once; one it holds goes the long path, in order."""
        table = self.table
        if len(table.sockets) >= self.max_sockets:
            return sum(self._apply_events(batch[i]) for i in range(start, end))
        applied, pos = 0, start
        while pos < end:
            clash = self._first_clash(batch.array, pos, end)
            if clash > pos:
                applied += self._short_run(batch, plans, which, pos, clash)
            if clash < end:  # the long path may add to the table: what follows is judged again
                applied += self._apply_events(batch[clash])
            pos = clash + 1
        return applied

    def _first_clash(self, a: np.ndarray, start: int, end: int) -> int:
        """The first record of [start, end) whose socket the table holds (or its baseline
        the connection), else ``end``."""
        table = self.table
        sks = a["skaddr"][start:end].tolist()
        first = end
        if not table.sockets.keys().isdisjoint(sks):
            first = start + next(i for i, sk in enumerate(sks) if sk in table.sockets)
        if table.baseline:
            conns = zip(a["saddr"][start:first].tolist(), a["sport"][start:first].tolist(),
                        a["daddr"][start:first].tolist(), a["dport"][start:first].tolist())
            first = next((start + i for i, c in enumerate(conns) if c in table.baseline), first)
        return first

    def _short_run(self, batch: RecordBatch, plans: list[Plan | None], which: np.ndarray,
                   start: int, end: int) -> int:
        """Applies records [start, end) at once, as ``_apply`` would one by one: the
        histograms and counters, then the TIME_WAIT model and the journal in record order."""
        a = batch.array[start:end]
        n = end - start
        run_which = which[start:end]
        svc = a["service_port"]
        born = a["ts_ns"].astype(np.int64)
        stamps = a["more_ts"].astype(np.int64)
        more = a["more"].astype(np.int64)
        died = stamps[np.arange(n), more - 1]
        outcome, counts = self.outcome, self.counts
        tw_rows: list[int] = []
        connected = np.zeros(n, dtype=bool)
        failed_ports: list[int] = []
        for p in np.unique(run_which).tolist():
            plan = plans[p]
            rows = np.flatnonzero(run_which == p)
            m = len(plan.visited)
            times = np.empty((len(rows), m + 1), dtype=np.int64)
            times[:, 0] = born[rows]
            times[:, 1:] = stamps[rows, :m]
            for key in outcome.observe_spans(outcome.state_durations, svc[rows], list(plan.visited), np.diff(times)):
                counts.setdefault(key, 0)
            if plan.to_timewait:
                tw_rows += rows.tolist()
            if plan.connected:
                connected[rows] = True
            if plan.failed:
                failed_ports += svc[rows].tolist()
        role = a["role"]
        for r in np.unique(role).tolist():
            rows = np.flatnonzero(role == r)
            outcome.observe_spans(outcome.connection_durations, svc[rows], [r], (died[rows] - born[rows]).reshape(-1, 1))
        for port, k in Counter(failed_ports).items():
            outcome.connect_failed(port, "timeout", k)
        uids = self.journal.take_uids(n)
        self._short_lives(batch, start, end, uids, sorted(tw_rows), connected, died)
        return n + int(more.sum())

    def _short_lives(self, batch: RecordBatch, start: int, end: int, uids: range, tw_rows: list[int],
                     connected: np.ndarray, died: np.ndarray) -> None:
        """The run's TIME_WAIT model and journal: connections that take over a
        TIME_WAIT end it, lives that close actively enter TIME_WAIT, the others end."""
        a = batch.array[start:end]
        n = end - start
        tw, journal = self.tw, self.journal
        first = start * batch.stride + batch.header
        raws = list(map(batch.data.__getitem__, map(slice, range(first, first + n * batch.stride, batch.stride),
                                                    range(first + RECORD_SIZE, first + RECORD_SIZE + n * batch.stride,
                                                          batch.stride))))
        to_tw = np.zeros(n, dtype=bool)
        to_tw[tw_rows] = True
        ended, ended_at = [], []  # lives that end, and where: 2 * record (+1 for its own end)
        if tw.by_conn or tw_rows:
            conns = list(zip(a["saddr"].tolist(), a["sport"].tolist(), a["daddr"].tolist(), a["dport"].tolist()))
            involved = np.flatnonzero(connected | to_tw)
            inv_conns = _pick(conns, involved)
            if len(set(inv_conns)) < len(inv_conns):
                return self._short_lives_in_order(a, raws, uids, conns, connected, to_tw, died.tolist())
            if tw.by_conn:
                earlier = list(map(tw.by_conn.get, inv_conns))
                hit = [i for i, e in enumerate(earlier) if e is not None]
                if hit:
                    rows = involved[hit]
                    taken = _pick(earlier, hit)
                    # A connect() takes a TIME_WAIT over at its own start; an active close
                    # of a connection still in TIME_WAIT ends it at the close.
                    ends = np.where(connected[rows], np.array([e[SINCE] for e in taken], dtype=np.int64),
                                    died[rows]).tolist()
                    ended = tw.take_over(taken, ends)
                    ended_at = (2 * rows).tolist()
            if tw_rows:
                entries = list(map(TimeWait, zip(
                    _pick(conns, tw_rows), died[tw_rows].tolist(), a["service_port"][tw_rows].tolist(),
                    _pick(uids, tw_rows), _pick(raws, tw_rows), repeat(0), repeat(0), repeat(0),
                    repeat(_TIME_WAIT), repeat(True), a["ts_ns"][tw_rows].tolist())))
                if tw.fits(len(entries)):
                    tw.enter_run(entries)
                else:
                    for e in entries:
                        tw.enter(e)
        if not journal.keep:
            return
        own = np.flatnonzero(~to_tw)
        ended += zip(_pick(uids, own), repeat(0), _pick(raws, own), repeat(False), repeat(None))
        ended_at += (2 * own + 1).tolist()
        if len(own) < len(ended):  # interleave by record, as one by one
            ended = _pick(ended, np.argsort(np.array(ended_at), kind="stable"))
        journal.pend_many(ended)

    def _short_lives_in_order(self, a: np.ndarray, raws: list[bytes], uids: range, conns: list[Conn],
                              connected: np.ndarray, to_tw: np.ndarray, died: list[int]) -> None:
        """``_short_lives`` one record at a time, for a run in which a connection comes
        twice (it takes over its own TIME_WAIT)."""
        tw, journal = self.tw, self.journal
        ports, borns = a["service_port"].tolist(), a["ts_ns"].tolist()
        for i in range(len(raws)):
            if connected[i] and tw.by_conn:
                earlier = tw.by_conn.get(conns[i])
                if earlier is not None:
                    tw.cancel(earlier, earlier[SINCE])
                    tw.reused += 1
            if to_tw[i]:
                tw.enter(TimeWait((conns[i], died[i], ports[i], uids[i], raws[i], 0, 0, 0, _TIME_WAIT, True,
                                   borns[i])))
            elif journal.keep:
                journal.pend((uids[i], 0, raws[i], False, None))

    # -- the kernel's socket table -----------------------------------------------

    def expire(self, now_ns: int) -> None:
        """Ends the TIME_WAITs whose time is up."""
        if not self.tw.due(now_ns):
            return
        with self.lock:
            self.tw.expire(now_ns)

    def load_baseline(self, kernel: Iterable[KernelSocket], now_ns: int,
                      ephemeral: range = range(32768, 61000)) -> int:
        """Loads the sockets that exist before any event names them. Their age is
        known only from now on. Their role is inferred, since nobody saw them open: a
        socket on a port something listens on is the passive side, and so is one whose
        local port is outside the ephemeral range while its peer's is inside it (its
        listener may be gone); any other is the active opener."""
        kernel = list(kernel)
        listening = {k.sport for k in kernel if k.state == _LISTEN}
        loaded = 0
        with self.lock:
            for k in kernel:
                lport, rport = k.sport, k.dport
                if k.state == _LISTEN:
                    role, port = Role.LISTENER.value, lport
                elif lport in listening or (lport not in ephemeral and rport in ephemeral):
                    role, port = Role.PASSIVE.value, lport
                else:
                    role, port = Role.ACTIVE.value, rport
                if k.state == _TIME_WAIT:
                    if k.conn not in self.tw:
                        self._add_kernel_timewait(k, now_ns, role, port)
                        loaded += 1
                    continue
                if k.state == _CLOSE:
                    continue
                entry = SocketEntry.from_kernel(k, now_ns, role, port)
                entry.uid = self.journal.take_uid()
                if self.journal.keep:
                    self.journal.changed[entry.uid] = entry
                self.table.add_baseline(entry)
                loaded += 1
            self.table.baseline_sockets += loaded
        return loaded

    def _add_kernel_timewait(self, k: KernelSocket, now_ns: int, role: int, port: int) -> TimeWait:
        # Without a re-arm the TIME_WAIT began (length - time left) ago; that is a
        # lower bound of its age, hence age_known stays False.
        entry = SocketEntry.from_kernel(k, self._kernel_began(k, now_ns), role, port)
        entry.uid = self.journal.take_uid()
        tw = self._enter_timewait(entry)
        self.tw.extend(tw, now_ns + k.expires_ns)
        return tw

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
        tw = self.tw
        with self.lock:
            for conn, entry in list(tw.by_conn.items()):
                k = kernel.get(conn)
                since, expires = entry[SINCE], entry[EXPIRES]
                if k is None or k.state != _TIME_WAIT:
                    if since < horizon and (expires or since > ending):
                        tw.cancel(entry, dumped_at_ns)
                        removed += 1
                    continue
                entry[NETNS] = k.netns
                model_left = (expires or since + self.timewait_ns) - dumped_at_ns
                began = self._kernel_began(k, dumped_at_ns)  # or was last re-armed
                if k.expires_ns > model_left + _REARM_SLACK_NS and began < horizon:
                    if not expires:
                        self.timewait_rearmed += 1
                    tw.extend(entry, dumped_at_ns + k.expires_ns)
            for conn, k in kernel.items():
                if k.state == _TIME_WAIT and conn not in tw.by_conn:
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
        for entry in list(self.table.sockets.values()):
            if entry.state not in RECONCILED_STATES or entry.since_ns >= horizon or not entry.sport:
                continue  # not read, too young to judge, or connect() has not bound it yet
            k = kernel.get(entry.conn)
            if k is not None and k.state == entry.state:
                entry.netns = k.netns
                continue
            if k is None:
                self._vanished(entry, dumped_at_ns)
            else:
                self.table.move(entry, k.state, dumped_at_ns)
                entry.netns = k.netns
                if self.journal.keep:
                    self.journal.changed[entry.uid] = entry

    # -- reader side -------------------------------------------------------------

    def in_timewait(self, ev: Event) -> bool:
        """Whether the connection of this event is now modelled in TIME_WAIT."""
        return (ev[2], ev[5], ev[3], ev[6]) in self.tw

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
            live = list(self.table.sockets.values())
            timewait = self.tw.entries()
            ports = {port for port, _ in self.counts}
        stuck: list[Stuck] = []
        oldest: dict[tuple[int, int], int] = {}
        floors = self._stuck_floor
        counts = {(port, state): 0 for port in ports for state in floors}
        rules = self.rules
        for entry in live:
            state = entry.state
            if state == _CLOSE:
                continue
            age = now_ns - entry.since_ns
            key = (entry.port, state)
            if age > oldest.get(key, -1):
                oldest[key] = age
            if state in floors and age > floors[state]:
                rule = rules.rule(entry.port, state)
                if age > rule.threshold_ns:
                    stuck.append(Stuck(entry, rule, age))
                    counts[key] = counts.get(key, 0) + 1
        tw_floor = floors.get(_TIME_WAIT)
        length = self.timewait_ns
        for entry in timewait:
            since, expires, port = entry[SINCE], entry[EXPIRES], entry[2]
            age = now_ns - since if expires else min(now_ns - since, length)
            key = (port, _TIME_WAIT)
            if age > oldest.get(key, -1):
                oldest[key] = age
            if tw_floor is not None and age > tw_floor:
                rule = rules.rule(port, _TIME_WAIT)
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

    def drain_raw(self, born_before_ns: int | None = None, limit: int | None = None) -> list:
        """The lives that changed since the last drain, as lifecycle.RawLife tuples:
        open ones as they are now, ended ones for the last time. With ``born_before_ns``,
        open lives born at or after it wait for a later drain: most connections end
        within seconds, and one that ends before it is drained is written once instead
        of twice. With ``limit``, at most that many, the ended first (oldest first); the
        rest wait for the next call. Only the lock holds the hand-over; the lives are
        expanded outside it (a history is copied in one step: the writer may append to
        it meanwhile)."""
        with self.lock:
            ended, open_lives = self.journal.hand_over(born_before_ns, limit)
        return Journal.expand(ended, open_lives)

    def pending_ended(self) -> int:
        """Ended lives waiting for the store."""
        return self.journal.pending()

    def drain_lifecycles(self, wall) -> list:
        """drain_raw as Lifecycles (the daemon hands the raw ones to the store)."""
        from tracer.core.lifecycle import from_raw

        return [from_raw(r, wall) for r in self.drain_raw()]

    def stuck_totals(self) -> dict[tuple[int, int], int]:
        with self.lock:
            return dict(self.outcome.stuck_total)

    def outcomes(self) -> OutcomesSnapshot:
        """Copies of the histograms and outcome counters, for a scrape."""
        with self.lock:
            return self.outcome.snapshot()

    def stats(self) -> TrackerStats:
        with self.lock:
            table, tw = self.table, self.tw
            return TrackerStats(
                events=self.events,
                sockets=len(table.sockets),
                timewait=tw.now,
                evicted=table.evicted + tw.evicted,
                timewait_entered=tw.entered,
                timewait_cancelled_by_reset=tw.cancelled_by_reset,
                timewait_reused=tw.reused,
                timewait_reconciled_removed=self.timewait_reconciled_removed,
                timewait_reconciled_added=self.timewait_reconciled_added,
                timewait_rearmed=self.timewait_rearmed,
                live_removed=table.removed,
                live_corrected=table.corrected,
                lifecycles_dropped=self.journal.dropped,
                baseline_sockets=table.baseline_sockets,
            )


def _pick(values: Sequence, at: Iterable[int]) -> list:
    """values[i] for each i in ``at``, in C."""
    return list(map(values.__getitem__, at.tolist() if isinstance(at, np.ndarray) else at))
