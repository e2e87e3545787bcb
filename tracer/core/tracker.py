"""The tracker: applies the kernel's records to the parts it owns, under one lock.

- the socket table (tracer/core/sockets.py): each full socket's state and identity;
- the TIME_WAIT model (tracer/core/timewait.py): what the tracepoint never reports;
- the outcomes (tracer/core/outcomes.py): histograms and counters by service port;
- the journal (tracer/core/journal.py): the lives the timeline store takes.

One writer applies records; readers take snapshots under the same lock. A record
is one transition, or a young socket's whole life (tracer/core/record.py). Runs of
lives born and closed in one record go the short path (tracer/core/shortpath.py),
whole runs at once; everything else goes one event at a time through ``_apply``,
with the same result (tests/unit/test_life_records.py). What no tracepoint shows
comes from the kernel's socket table (tracer/core/corrections.py): ``reconcile``
corrects the model and names namespaces, ``load_baseline`` brings in the sockets
that existed before the daemon started.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tracer.core.closes import CloseTally, closer_of, how_of, sent_fin
from tracer.core.detector import WATCHED, Report, Rules, held_half_closed, judge
from tracer.core.journal import PENDING_LIVES_MAX, Journal
from tracer.core.kernel_socket import Conn, KernelSocket
from tracer.core.lifecycle import ended_with_how, from_raw, pack_ended
from tracer.core.outcomes import BOUNDS_NS, DURATION_BUCKETS_S, Histogram, Outcomes, OutcomesSnapshot, connect_failure
from tracer.core.record import MORE_AT, Event, Record, RecordBatch, events_of
from tracer.core.sockets import SocketEntry, SocketTable, intern
from tracer.core.states import ACTIVE_CLOSE_STATES, EventKind, Role, TcpState
from tracer.core.corrections import Corrections
from tracer.core.shortpath import ShortPath
from tracer.core.timewait import SINCE, TimeWait, TimeWaitModel

__all__ = ["BadRecords", "DURATION_BUCKETS_S", "Histogram", "OutcomesSnapshot", "PENDING_LIVES_MAX", "RECONCILED_STATES",
           "SocketEntry", "Tracker", "TrackerStats"]

_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value
_SYN_SENT = TcpState.SYN_SENT.value
_ACTIVE_CLOSE = frozenset(int(s) for s in ACTIVE_CLOSE_STATES)
# The states the kernel's table is read for: the watched (stuck-prone) ones and CLOSING.
RECONCILED_STATES = frozenset([s.value for s in WATCHED if s != TcpState.TIME_WAIT] + [TcpState.CLOSING.value])
_STATE = EventKind.STATE.value
_RETRANSMIT = EventKind.RETRANSMIT.value
_CLOSED_AGAIN = frozenset({TcpState.FIN_WAIT1.value, TcpState.FIN_WAIT2.value})
UNBOUND_KEPT = 1024  # refused connects waiting to be explained; past it the oldest go (they are counted anyway)
_LISTEN_OR_CLOSE = frozenset({TcpState.CLOSE.value, TcpState.LISTEN.value})
_CONNECTION_ROLES = frozenset({Role.ACTIVE.value, Role.PASSIVE.value})


class BadRecords(Exception):
    """Applying records [first, end) of a batch raised ``cause``; those before were
    applied, those from ``end`` on were not tried. What the failed ones had changed
    stays: the next read of the kernel's table corrects such a socket."""

    def __init__(self, first: int, end: int, cause: Exception) -> None:
        super().__init__(f"records {first}-{end - 1} of the batch: {type(cause).__name__}: {cause}")
        self.first, self.end, self.cause = first, end, cause


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
        self.lock = threading.Lock()
        self._set_rules(rules)
        # (service port, state) -> sockets now in it, the table's and the TIME_WAIT model's.
        self.counts: dict[tuple[int, int], int] = {}
        self.outcome = Outcomes()
        self.journal = Journal(keep_lifecycles, min(4 * max_sockets, PENDING_LIVES_MAX))
        # How each connection closed (tracer/core/closes.py); a life whose close is told
        # by a later reset waits there before it goes to the journal.
        self.closes = CloseTally(self.outcome, self._pend_closed if keep_lifecycles else None)
        self.table = SocketTable(max_sockets, self.counts)
        self.tw = TimeWaitModel(timewait_ns, max_sockets, self.counts, self.outcome, self.journal,
                                self._stuck_on_leaving)
        self.events = 0
        # The kernel's clock up to which the reader has applied what the program sent
        # (0: not known; the daemon's event reader keeps it). The kernel's socket table
        # is judged only that far, less a grace: beyond, the model may not know yet.
        self.seen_until_ns = 0
        # Connects refused for want of a free local port, for the daemon to explain (what
        # held the ports toward the destination): (ts_ns, pid, comm, family, daddr, dport).
        self.unbound: deque[tuple] = deque(maxlen=UNBOUND_KEPT)
        self.short = ShortPath(self, self._apply_events)
        # What the long path reads for every event, one attribute away (none of them is replaced).
        self._sockets, self._durations, self._keep = self.table.sockets, self.outcome.state_durations, keep_lifecycles
        self.corrections = Corrections(self, RECONCILED_STATES)

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
            if kind == _RETRANSMIT:
                self._retransmitted(sk, ev_old, ts)
            else:
                self._reset(ev)
            return -1
        counts, table, sockets = self.counts, self.table, self._sockets
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
            journal = self.journal
            entry.uid = journal.next_uid
            journal.next_uid += 1
            old = ev_old
            if new != _CLOSE:
                if len(sockets) < self.max_sockets:
                    sockets[sk] = entry
                    counts.setdefault((svc, new), 0)
                else:
                    self._insert(entry)
        else:
            old = entry.state
            if ts == entry.since_ns and new == old:
                # The twin of the last transition of a life user space took while the
                # program appended it (bpf/tcpstates.bpf.c append): already applied.
                return -1
            if new == old == ev_old and new in _CLOSED_AGAIN:
                # close() of a socket shutdown() already sent the FIN of: no new state.
                entry.closed_by_owner = True
                entry.flags = flags
                return -1
            key = (entry.port, old)
            counts[key] -= 1
            # A missed transition (the kernel skips the program now and then) leaves the
            # model in another state than the event left: how long is then unknown.
            if entry.age_known and old == ev_old:
                spent = ts - entry.since_ns
                durations = self._durations
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
            waiting = False
            if old == _SYN_SENT:
                reason = connect_failure(entry.reset, sport)
                self.outcome.connect_failed(svc, reason)
                if reason == "no_local_port":
                    self.unbound.append((ts, entry.pid, entry.comm, entry.family, entry.daddr, entry.dport))
            elif entry.role in _CONNECTION_ROLES and (closer := closer_of(states := entry.history[0::2])) is not None:
                how = how_of(sent_fin(states), flags, entry.reset)
                if how is not None:
                    self.outcome.closed(svc, closer, how)
                else:  # its reset may follow: the life waits for it
                    waiting = True
                    self.closes.wait(sk, svc, closer, ts, self._end(entry, ts, wait=True))
            if old in _ACTIVE_CLOSE and not entry.reset:
                self._enter_timewait(entry)
            elif not waiting:
                self._end(entry, ts)
            if entry.opened and entry.role in _CONNECTION_ROLES:
                self.outcome.observe(self.outcome.connection_durations, (svc, entry.role), ts - entry.first_ns)
        else:
            key = (svc, new)
            counts[key] = counts.get(key, 0) + 1
            if self._keep:
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

    def _end(self, entry: SocketEntry, end_ns: int, wait: bool = False) -> bytes | None:
        """The socket's life is over: it goes to the timeline once more, closed (with
        ``wait``, it is returned instead, for the close tally to send on)."""
        entry.ended_ns = end_ns
        journal = self.journal
        if not journal.keep:
            return None
        journal.changed.pop(entry.uid, None)
        if not entry.uid:  # never a life of its own
            return None
        item = pack_ended(entry.raw_life(end_ns))
        if wait:
            return item
        journal.pend(item)
        return None

    def _pend_closed(self, item: bytes | tuple, how: int) -> None:
        self.journal.pend(ended_with_how(item, how))

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

    def _retransmitted(self, sk: int, state: int, ts: int) -> None:
        """A segment the socket retransmitted in ``state``: counted on the socket, for the
        stuck evidence (a TIME_WAIT mini-socket never retransmits)."""
        entry = self.table.sockets.get(sk)
        if entry is None:
            return
        r = entry.retransmits
        if r is None:
            entry.retransmits = [state, 1, ts, 1]
        else:
            r[1] = r[1] + 1 if r[0] == state else 1
            r[0], r[2] = state, ts
            r[3] += 1
        entry.mark(_RETRANSMIT, state, ts)
        if self._keep and entry.uid:
            self.journal.changed[entry.uid] = entry

    def _reset(self, ev: Event) -> None:
        entry = self.table.sockets.get(ev[1])
        if entry is not None:
            entry.reset = ev[9]  # its kind: which end sent it
            entry.mark(ev[9], entry.state, ev[0])
            return
        if self.closes.pending and self.closes.reset(ev[1], ev[9]):
            return  # an abortive close: the kernel resets after the CLOSE
        self.tw.reset((ev[2], ev[5], ev[3], ev[6]), ev[0])

    def _count_stuck(self, entry: SocketEntry | TimeWait, age_ns: int) -> None:
        """Counts a socket once per visit to a state, when its age passes the state's threshold."""
        if type(entry) is SocketEntry and held_half_closed(entry.state, entry.flags, entry.closed_by_owner):
            return
        rule = self.rules.rule(entry.port, entry.state) if self.rules else None
        if rule is not None and age_ns > rule.threshold_ns and entry.stuck_state != entry.state:
            entry.stuck_state = entry.state
            self.outcome.stuck(entry.port, entry.state)

    def _stuck_on_leaving(self, entry: TimeWait, age_ns: int) -> None:
        if age_ns > self._floors[_TIME_WAIT]:
            self._count_stuck(entry, age_ns)

    # -- writer side: the kernel's records ---------------------------------------

    def _set_rules(self, rules: Rules | None) -> None:
        self.rules = rules
        self._stuck_floor = rules.lowest_ns() if rules else {}
        # The same by state number, with no floor where no rule watches the state.
        self._floors = [self._stuck_floor.get(state, 1 << 62) for state in range(16)]
        self._min_floor = min(self._floors)

    def replace_rules(self, rules: Rules) -> None:
        """New stuck thresholds (SIGHUP): the next scan judges every socket by them; a
        socket already counted stuck in its state is not counted again."""
        with self.lock:
            self._set_rules(rules)

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
        short = self.short
        with self.lock:
            plans, which = short.plans_of(a)
            long = np.flatnonzero(~short.candidates(a, plans, which)).tolist()
            start = applied = 0
            apply = self._apply
            in_run = True
            try:
                for i, rec in zip(long + [n], batch.records(long) + [None]):
                    if i > start:
                        in_run = True
                        applied += short.runs(batch, plans, which, start, i)
                    if rec is None:
                        break
                    in_run = False
                    if rec[MORE_AT]:
                        applied += self._apply_events(rec)
                    else:  # a transition on its own: a socket older than its first moments
                        apply(rec[:MORE_AT])
                        applied += 1
                    start = i + 1
            except Exception as exc:  # the unit that failed: a run of the short path, or one record
                raise BadRecords(start, i if in_run else i + 1, exc) from exc
            finally:
                self.events += applied

    def _apply_events(self, rec: Record) -> int:
        """The long path: the record's events one by one."""
        events = events_of(rec)
        for ev in events:
            self._apply(ev)
        return len(events)

    # -- the kernel's socket table -----------------------------------------------

    def expire(self, now_ns: int) -> None:
        """Ends the TIME_WAITs whose time is up; counts the closes that waited for a reset
        in vain as timeouts."""
        if self.closes.pending:
            with self.lock:
                self.closes.settle(now_ns)
        if not self.tw.due(now_ns):
            return
        with self.lock:
            self.tw.expire(now_ns)

    def load_baseline(self, kernel: Iterable[KernelSocket], now_ns: int,
                      ephemeral: range = range(32768, 61000), previous: Iterable = (),
                      offset_ns: int = 0) -> int:
        """The sockets open before any event names them, a previous run's open lives
        continued where the kernel still has them (tracer/core/corrections.py)."""
        return self.corrections.load_baseline(kernel, now_ns, ephemeral, previous, offset_ns)

    def reconcile(self, kernel: Mapping[Conn, KernelSocket], dumped_at_ns: int,
                  grace_ns: int) -> tuple[int, int]:
        """The model made to agree with the kernel's table (tracer/core/corrections.py);
        returns (TIME_WAITs removed, TIME_WAITs added)."""
        return self.corrections.reconcile(kernel, dumped_at_ns, grace_ns)

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
        report = judge(live, timewait, ports, self.rules, self._stuck_floor, self.timewait_ns, now_ns)
        stuck = report.stuck
        if stuck:
            with self.lock:
                for s in stuck:
                    if s.entry.state == s.rule.state.value:
                        self._count_stuck(s.entry, s.age_ns)
        return report

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

    def take_unbound(self) -> list[tuple]:
        """The connects refused for want of a local port since the last call, oldest first.
        Without the lock: a deque's append and popleft are atomic, and the writer must
        not wait for this thread."""
        out, take = [], self.unbound.popleft
        while True:
            try:
                out.append(take())
            except IndexError:
                return out

    def release_closes(self) -> None:
        """Before the last drain, as the daemon stops: lives waiting for a late reset go
        to the journal, how they closed not known."""
        with self.lock:
            self.closes.release()

    def pending_ended(self) -> int:
        """Ended lives waiting for the store."""
        return self.journal.pending()

    def drain_lifecycles(self, wall) -> list:
        """drain_raw as Lifecycles (the daemon hands the raw ones to the store)."""
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
                timewait_reconciled_removed=self.corrections.timewait_removed,
                timewait_reconciled_added=self.corrections.timewait_added,
                timewait_rearmed=self.corrections.timewait_rearmed,
                live_removed=table.removed,
                live_corrected=table.corrected,
                lifecycles_dropped=self.journal.dropped,
                baseline_sockets=table.baseline_sockets,
            )


