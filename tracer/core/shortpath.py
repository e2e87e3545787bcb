"""The short path: runs of lives born and closed in one kernel record, applied at once.

At high churn most records are a young socket's whole life: opened (connect() or a
listener's child), closed, no reset, nothing stuck on the way. Such a socket never
needs an entry in the table. A run of them is applied with numpy over the records
as the kernel wrote them (tracer/core/record.RecordBatch), with the same result as
the tracker's long path taking their events one by one (tests/unit/test_life_records.py):
the histograms and counters first (they commute), then the TIME_WAIT model and the
journal in record order. Each life stays where the kernel wrote it, (the batch's
bytes, offset), until the store takes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

import numpy as np

from tracer.core.closes import closer_of, how_of, sent_fin
from tracer.core.record import MORE, RECORD_SIZE, Record, RecordBatch
from tracer.core.states import ACTIVE_CLOSE_STATES, F_SHUT_RDWR, F_SHUT_WR, EventKind, Role, TcpState
from tracer.core.timewait import SINCE, TimeWait

_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value
_SYN_SENT = TcpState.SYN_SENT.value
_ACTIVE_CLOSE = frozenset(int(s) for s in ACTIVE_CLOSE_STATES)
_SHUT = F_SHUT_WR | F_SHUT_RDWR
_LISTEN_OR_CLOSE = frozenset({TcpState.CLOSE.value, TcpState.LISTEN.value})
_STATE = EventKind.STATE.value
_SHIFTS = np.arange(MORE, dtype=np.uint64) * np.uint64(8)
_UNBOUND = ("pid", "comm", "family", "daddr", "dport")  # after the time: as Tracker.unbound holds them


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
    closer: str | None = None  # who sent the first FIN (tracer/core/closes.py); None: no connection
    fin: bool = False  # this end sent a FIN


def _plan(first_old: int, first_new: int, codes: bytes, more: int) -> Plan | None:
    """The plan of a record the short path takes (opened from CLOSE or a listener, no
    resets, CLOSE once and last), or None."""
    if first_old not in _LISTEN_OR_CLOSE or first_new == _CLOSE:
        return None
    states = [first_new]
    for code in codes[:more]:
        if code >> 4 or code == _CLOSE and len(states) < more or not code or code == states[-1]:
            return None  # (a state again: close() after shutdown(), which the long path notes)
        states.append(code)
    if states[-1] != _CLOSE:
        return None
    visited = tuple(states[:-1])
    connected = any(visited[i - 1] == _SYN_SENT for i in range(1, len(visited)))
    failed = visited[-1] == _SYN_SENT
    closer = None if failed else closer_of(visited)
    return Plan(visited, connected, visited[-1] in _ACTIVE_CLOSE, failed, closer, sent_fin(visited))


class ShortPath:
    """Works on the tracker's parts, under the tracker's lock; ``long`` is the tracker's
    long path for a record (its events one by one), which returns the events applied."""

    def __init__(self, tracker, long: Callable[[Record], int]) -> None:
        self.table, self.tw, self.outcome, self.journal = tracker.table, tracker.tw, tracker.outcome, tracker.journal
        self.counts = tracker.counts
        self.closes = tracker.closes
        self.unbound = tracker.unbound
        self.max_sockets = tracker.max_sockets
        self._floors, self._min_floor = tracker._floors, tracker._min_floor
        self._apply_events = long
        # Plan key (more_state bytes | oldstate << 56 | newstate << 60) -> Plan or None:
        # lives follow few paths.
        self._plans: dict[int, Plan | None] = {}

    def plans_of(self, a: np.ndarray) -> tuple[list[Plan | None], np.ndarray]:
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

    def candidates(self, a: np.ndarray, plans: list[Plan | None], which: np.ndarray) -> np.ndarray:
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

    def runs(self, batch: RecordBatch, plans: list[Plan | None], which: np.ndarray,
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
                applied += self._run(batch, plans, which, pos, clash)
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
        if table.baseline and first > start:
            # Only a record on a local port of the baseline can be one of its connections.
            near = start + np.flatnonzero(np.isin(a["sport"][start:first], table.baseline_ports()))
            for i in near.tolist():
                if (a["saddr"][i].tobytes(), int(a["sport"][i]), a["daddr"][i].tobytes(),
                        int(a["dport"][i])) in table.baseline:
                    return i
        return first

    def _run(self, batch: RecordBatch, plans: list[Plan | None], which: np.ndarray,
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
        unbound: list[int] = []  # of those, connects that never had a local port: none was free
        uids = self.journal.take_uids(n)
        waiting = np.zeros(n, dtype=bool)  # closes whose late reset tells how: their lives wait
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
            if plan.closer is not None:
                if not plan.fin:
                    waiting[rows] = True
                self._closes(plan, a, rows, svc, batch, start, uids)
            if plan.failed:
                failed_ports += svc[rows].tolist()
                no_port = rows[a["sport"][rows] == 0]
                if len(no_port):
                    unbound += svc[no_port].tolist()
                    self.unbound.extend(zip(died[no_port].tolist(), *(a[f][no_port].tolist() for f in _UNBOUND)))
        role = a["role"]
        for r in np.unique(role).tolist():
            rows = np.flatnonzero(role == r)
            outcome.observe_spans(outcome.connection_durations, svc[rows], [r], (died[rows] - born[rows]).reshape(-1, 1))
        no_port = Counter(unbound)
        for port, k in Counter(failed_ports).items():
            if k > no_port[port]:
                outcome.connect_failed(port, "timeout", k - no_port[port])
        for port, k in no_port.items():
            outcome.connect_failed(port, "no_local_port", k)
        self._lives(batch, start, end, uids, sorted(tw_rows), connected, died, waiting)
        return n + int(more.sum())

    def _closes(self, plan: Plan, a: np.ndarray, rows: np.ndarray, svc: np.ndarray, batch: RecordBatch,
                start: int, uids: range) -> None:
        """How the run's connections of one plan closed, by port and the shutdown() flags
        of their records (a plan has no resets: those take the long path)."""
        if not plan.fin:  # neither a FIN nor a reset yet: the kernel's reset may follow
            closes, keep = self.closes, self.journal.keep
            first = start * batch.stride + batch.header
            for i, sk, port, ts in zip(rows.tolist(), a["skaddr"][rows].tolist(), svc[rows].tolist(),
                                       a["more_ts"][rows, len(plan.visited) - 1].tolist()):
                life = (uids[i], 0, batch.data, first + i * batch.stride, False, None) if keep else None
                closes.wait(sk, port, plan.closer, ts, life)
            return
        # By (port, shutdown flags), counted in numpy: every connection of the run passes here.
        keys, counts = np.unique(svc[rows].astype(np.int64) << 8 | (a["flags"][rows] & _SHUT), return_counts=True)
        for key, k in zip(keys.tolist(), counts.tolist()):
            self.outcome.closed(key >> 8, plan.closer, how_of(True, key & 0xFF, 0), k)

    def _lives(self, batch: RecordBatch, start: int, end: int, uids: range, tw_rows: list[int],
               connected: np.ndarray, died: np.ndarray, waiting: np.ndarray) -> None:
        """The run's TIME_WAIT model and journal: connections that take over a
        TIME_WAIT end it, lives that close actively enter TIME_WAIT, the others end
        (those ``waiting`` for their reset went to the close tally)."""
        a = batch.array[start:end]
        n = end - start
        tw, journal = self.tw, self.journal
        # A life stays where the kernel wrote it (the batch's bytes, its offset) until the
        # store takes it; one that enters TIME_WAIT takes a copy of its record.
        first = start * batch.stride + batch.header
        to_tw = np.zeros(n, dtype=bool)
        to_tw[tw_rows] = True
        ended, ended_at = [], []  # lives that end, and where: 2 * record (+1 for its own end)
        # Connections that may take over a TIME_WAIT (one of the model's, or one a life
        # earlier in the run leaves), and those that leave one.
        involved = np.flatnonzero(connected | to_tw) if tw.by_conn or tw_rows else []
        if len(involved):
            inv_conns = list(zip(*(a[f][involved].tolist() for f in ("saddr", "sport", "daddr", "dport"))))
            if len(set(inv_conns)) < len(inv_conns):
                return self._lives_in_order(batch, start, end, uids, connected, to_tw, died.tolist(), waiting)
            if tw.by_conn:
                earlier = list(map(tw.by_conn.get, inv_conns))
                hit = [i for i, e in enumerate(earlier) if e is not None] if any(earlier) else []
                if hit:
                    rows = involved[hit]
                    taken = _pick(earlier, hit)
                    # A connect() takes a TIME_WAIT over at its own start; an active close
                    # of a connection still in TIME_WAIT ends it at the close.
                    since = np.fromiter(map(itemgetter(SINCE), taken), dtype=np.int64, count=len(taken))
                    ended = tw.take_over(taken, np.where(connected[rows], since, died[rows]).tolist())
                    ended_at = (2 * rows).tolist()
            if tw_rows:
                at = np.searchsorted(involved, tw_rows).tolist()  # tw_rows are among the involved
                offsets = first + np.asarray(tw_rows) * batch.stride
                entries = list(map(TimeWait, zip(
                    _pick(inv_conns, at), died[tw_rows].tolist(), a["service_port"][tw_rows].tolist(),
                    (uids.start + np.asarray(tw_rows)).tolist(), _copies(batch.data, offsets.tolist()), repeat(0),
                    repeat(0), repeat(0),
                    repeat(_TIME_WAIT), repeat(True), a["ts_ns"][tw_rows].tolist())))
                if tw.fits(len(entries)):
                    tw.enter_run(entries)
                else:
                    for e in entries:
                        tw.enter(e)
        if not journal.keep:
            return
        own = np.flatnonzero(~(to_tw | waiting))
        ended += zip((uids.start + own).tolist(), repeat(0), repeat(batch.data), (first + own * batch.stride).tolist(),
                     repeat(False), repeat(None))
        if ended_at:  # interleave by record, as one by one
            ended_at += (2 * own + 1).tolist()
            ended = _pick(ended, np.argsort(np.array(ended_at), kind="stable"))
        journal.pend_many(ended)

    def _lives_in_order(self, batch: RecordBatch, start: int, end: int, uids: range,
                        connected: np.ndarray, to_tw: np.ndarray, died: list[int], waiting: np.ndarray) -> None:
        """``_lives`` one record at a time, for a run in which a connection comes twice
        (it takes over its own TIME_WAIT)."""
        a = batch.array[start:end]
        tw, journal = self.tw, self.journal
        conns = list(zip(a["saddr"].tolist(), a["sport"].tolist(), a["daddr"].tolist(), a["dport"].tolist()))
        ports, borns = a["service_port"].tolist(), a["ts_ns"].tolist()
        data, first = batch.data, start * batch.stride + batch.header
        for i in range(end - start):
            at = first + i * batch.stride
            if connected[i] and tw.by_conn:
                earlier = tw.by_conn.get(conns[i])
                if earlier is not None:
                    tw.cancel(earlier, earlier[SINCE])
                    tw.reused += 1
            if to_tw[i]:
                tw.enter(TimeWait((conns[i], died[i], ports[i], uids[i], data[at:at + RECORD_SIZE], 0, 0, 0,
                                   _TIME_WAIT, True, borns[i])))
            elif journal.keep and not waiting[i]:
                journal.pend((uids[i], 0, data, at, False, None))


def _copies(data: bytes, offsets: list[int]) -> list[bytes]:
    """The records at these offsets of ``data``, each a bytes object of its own, in C."""
    return list(map(data.__getitem__, map(slice, offsets, [a + RECORD_SIZE for a in offsets])))


def _pick(values: Sequence, at: Iterable[int]) -> list:
    """values[i] for each i in ``at``, in C."""
    return list(map(values.__getitem__, at.tolist() if isinstance(at, np.ndarray) else at))
