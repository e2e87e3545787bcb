"""The TIME_WAIT model: connections whose full socket closed actively and whose
timewait mini-socket the kernel holds now.

The tracepoint never reports TIME_WAIT: an orderly active close (FIN_WAIT1, FIN_WAIT2
or CLOSING to CLOSE, no reset) hands the connection to a timewait mini-socket that
lives for the kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN, 60 s). The model keeps one
entry per connection (the kernel holds one), ends it on schedule, or earlier when a
new connection takes it over (tcp_tw_reuse) or a reset follows the close; what no
tracepoint shows (a TIME_WAIT killed early, or kept by a retransmitted FIN that
re-arms its timer) the tracker corrects from the kernel's socket table.

Entries are ``TimeWait`` lists, so that a run of the tracker's short path makes
thousands of them with a few C-level calls (``enter_run``) instead of a Python
object each.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import compress, count, repeat
from operator import eq, itemgetter, setitem

from tracer.core.journal import Journal
from tracer.core.kernel_socket import Conn
from tracer.core.lifecycle import pack_ended, record_life
from tracer.core.outcomes import Outcomes
from tracer.core.record import unpack_from
from tracer.core.states import TcpState

_TIME_WAIT = TcpState.TIME_WAIT.value
_CLOSE = TcpState.CLOSE.value
# Ended TIME_WAITs the expiry FIFO may hold beyond twice the live ones.
FIFO_SLACK = 4096

# TimeWait positions.
CONN, SINCE, PORT, UID, LIFE, NETNS, EXPIRES, STUCK, STATE, AGE_KNOWN, FIRST = range(11)


def _field(i: int, doc: str) -> property:
    return property(itemgetter(i), lambda self, v: self.__setitem__(i, v), doc=doc)


class TimeWait(list):
    """[conn, since_ns, port, uid, life, netns, expires_ns, stuck_state, state,
    age_known, first_ns]. ``life`` is who the socket was: the kernel record it closed in
    (its bytes, copied out of the batch so that a minute of TIME_WAITs does not keep
    every batch they came in), or the table's SocketEntry. ``expires_ns`` is set when the
    kernel's timer decides the end (re-armed, or found in the kernel's table), 0 when
    the model ends it after the standard length. Named access is for readers off the
    hot path (the stuck scan, the API, tests)."""

    __slots__ = ()
    conn = _field(CONN, "(saddr, sport, daddr, dport)")
    since_ns = _field(SINCE, "when TIME_WAIT began, or was last re-armed")
    port = _field(PORT, "service port")
    uid = _field(UID, "the timeline's id")
    netns = _field(NETNS, "network namespace, 0 until the kernel's table names it")
    expires_ns = _field(EXPIRES, "end set by the kernel's timer, or 0")
    stuck_state = _field(STUCK, "the state it was last counted stuck in")
    state = _field(STATE, "TIME_WAIT, or CLOSE once ended")
    age_known = _field(AGE_KNOWN, "False when found in the kernel's table")
    first_ns = _field(FIRST, "when the socket was born")

    def _head(self) -> tuple:
        life = self[LIFE]
        if type(life) is bytes:
            return unpack_from(life, 0)
        return (0, life.sk, life.saddr, life.daddr, life.pid, life.sport, life.dport, life.port, life.family, 0, 0,
                0, life.role, life.flags, life.comm)

    # Who the socket was, as the stuck report and the API show it.
    sk = property(lambda self: self._head()[1])
    saddr = property(lambda self: self[CONN][0])
    sport = property(lambda self: self[CONN][1])
    daddr = property(lambda self: self[CONN][2])
    dport = property(lambda self: self[CONN][3])
    pid = property(lambda self: self._head()[4])
    family = property(lambda self: self._head()[8])
    role = property(lambda self: self._head()[12])
    comm = property(lambda self: self._head()[14])

    def raw_life(self, end_ns: int | None = None) -> tuple:
        """The life as lifecycle.RawLife: open (in TIME_WAIT), or ended at ``end_ns``."""
        life = self[LIFE]
        if type(life) is bytes:
            return record_life(self[UID], self[NETNS], life, 0, True, end_ns)
        return life.raw_life(end_ns, self[UID], self[NETNS])

    def ended_item(self, end_ns: int) -> bytes | tuple:
        """What the journal keeps of it once ended."""
        life = self[LIFE]
        if type(life) is bytes:
            return (self[UID], self[NETNS], life, 0, True, end_ns)
        return pack_ended(self.raw_life(end_ns))


class TimeWaitModel:
    def __init__(self, timewait_ns: int, max_entries: int, counts: dict, outcomes: Outcomes,
                 journal: Journal, count_stuck: Callable[[TimeWait, int], None]) -> None:
        self.timewait_ns = timewait_ns
        self.max_entries = max_entries
        self.counts = counts  # (service port, state) -> sockets now in it, shared with the table
        self.outcomes = outcomes
        self.journal = journal
        self.count_stuck = count_stuck
        # Every TIME_WAIT by connection: how a reset that follows the close finds it
        # (the kernel sets CLOSE before it sends an abortive reset), how a connect()
        # takes one over, and how the kernel's socket table is matched against the model.
        self.by_conn: dict[Conn, TimeWait] = {}
        # Oldest first: all share one length, so a FIFO is also the expiry order.
        # Entries whose end the kernel's timer decides move to ``extended`` (and are
        # skipped here when they reach the front).
        self.fifo: deque[TimeWait] = deque()
        self.extended: dict[Conn, TimeWait] = {}
        # Their ends, soonest first: (expires_ns, tie-break, entry). An end that no
        # longer holds (the entry left ``extended``, or its timer moved) is skipped.
        self.extended_ends: list[tuple[int, int, TimeWait]] = []
        self._tie = count()
        self.now = 0  # live entries
        self.entered = 0
        self.cancelled_by_reset = 0
        self.reused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return self.now

    def __contains__(self, conn: Conn) -> bool:
        return conn in self.by_conn

    # -- entering ---------------------------------------------------------------

    def enter(self, entry: TimeWait) -> None:
        """One connection enters TIME_WAIT (the kernel holds one per connection)."""
        conn = entry[CONN]
        earlier = self.by_conn.get(conn)
        if earlier is not None:
            self.cancel(earlier, entry[SINCE])
            self.reused += 1
        while self.now >= self.max_entries:
            self._evict_oldest(entry[SINCE])
        self._add(entry)
        self.by_conn[conn] = entry
        self.now += 1
        self.entered += 1
        port = entry[PORT]
        key = (port, _TIME_WAIT)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.outcomes.timewait_entered(port)
        if self.journal.keep:
            self.journal.changed[entry[UID]] = entry

    def enter_run(self, entries: list[TimeWait]) -> None:
        """Many connections enter TIME_WAIT at once, none of them in the model, no two
        the same; the caller checked (``fits``)."""
        by_conn = self.by_conn
        by_conn.update(zip(map(itemgetter(CONN), entries), entries))
        self.fifo.extend(entries)
        n = len(entries)
        self.now += n
        self.entered += n
        counts, outcomes = self.counts, self.outcomes
        for port, k in Counter(map(itemgetter(PORT), entries)).items():
            key = (port, _TIME_WAIT)
            counts[key] = counts.get(key, 0) + k
            outcomes.timewait_entered(port, k)
        if self.journal.keep:
            self.journal.changed.update(zip(map(itemgetter(UID), entries), entries))
        self._compact()

    def fits(self, n: int) -> bool:
        """Whether ``n`` more entries need no eviction."""
        return self.now + n <= self.max_entries

    def _add(self, entry: TimeWait) -> None:
        self.fifo.append(entry)
        self._compact()

    def _compact(self) -> None:
        fifo = self.fifo
        if len(fifo) > 2 * self.now + FIFO_SLACK:
            # An ended TIME_WAIT (taken over by a new connection, reset, reconciled) leaves
            # the FIFO only at its front, a TIME_WAIT length later: churn that reuses its
            # ports would keep a minute of them.
            self.fifo = deque(compress(fifo, map(eq, map(itemgetter(STATE), fifo), repeat(_TIME_WAIT))))

    def _evict_oldest(self, now_ns: int) -> None:
        while self.fifo:
            oldest = self.fifo.popleft()
            if oldest[STATE] == _TIME_WAIT and not oldest[EXPIRES]:
                break
        else:
            oldest = next(iter(self.extended.values()))
        self.evicted += 1
        self.cancel(oldest, now_ns)

    # -- ending -----------------------------------------------------------------

    def cancel(self, entry: TimeWait, end_ns: int, pend: bool = True) -> bytes | tuple | None:
        """Ends a TIME_WAIT; a FIFO entry leaves the FIFO when it reaches the front.
        Its life goes to the journal, or (``pend`` False) back to the caller, who
        journals it in its order."""
        entry[STATE] = _CLOSE
        self.counts[(entry[PORT], _TIME_WAIT)] -= 1
        self.now -= 1
        conn = entry[CONN]
        if self.by_conn.get(conn) is entry:
            del self.by_conn[conn]
        if self.extended and self.extended.get(conn) is entry:
            del self.extended[conn]
        journal = self.journal
        if not journal.keep:
            return None
        journal.changed.pop(entry[UID], None)
        if not entry[UID]:
            return None
        item = entry.ended_item(end_ns)
        if pend:
            journal.pend(item)
        return item

    def take_over(self, entries: list[TimeWait], ends: list[int]) -> list:
        """Ends these TIME_WAITs (all in the model, no two of one connection), each at
        its ``ends``: new connections of the same connections took them over. Returns
        their lives for the caller to journal in its order (empty unless kept)."""
        deque(map(setitem, entries, repeat(STATE), repeat(_CLOSE)), maxlen=0)
        counts = self.counts
        for port, k in Counter(map(itemgetter(PORT), entries)).items():
            counts[(port, _TIME_WAIT)] -= k
        n = len(entries)
        self.now -= n
        self.reused += n
        conns = list(map(itemgetter(CONN), entries))
        deque(map(self.by_conn.pop, conns), maxlen=0)
        if self.extended:
            for e in entries:
                if self.extended.get(e[CONN]) is e:
                    del self.extended[e[CONN]]
        journal = self.journal
        if not journal.keep:
            return []
        journal.forget(map(itemgetter(UID), entries))
        lives = list(map(itemgetter(LIFE), entries))
        if set(map(type, lives)) == {bytes}:  # all the short path's: their items in C
            return list(zip(map(itemgetter(UID), entries), map(itemgetter(NETNS), entries), lives, repeat(0),
                            repeat(True), ends))
        return [e.ended_item(end) for e, end in zip(entries, ends) if e[UID]]

    def reset(self, conn: Conn, ts: int) -> bool:
        """A reset right after the close: that connection left no TIME_WAIT."""
        entry = self.by_conn.get(conn)
        if entry is None:
            return False
        self.cancel(entry, ts)
        self.cancelled_by_reset += 1
        return True

    def age(self, entry: TimeWait, now_ns: int) -> int:
        """A TIME_WAIT the model ends on schedule is never older than the TIME_WAIT
        length, however late the daemon gets round to ending it."""
        age = now_ns - entry[SINCE]
        return age if entry[EXPIRES] else min(age, self.timewait_ns)

    def _leave(self, entry: TimeWait, now_ns: int) -> None:
        if entry[STATE] != _TIME_WAIT:  # cancelled meanwhile
            return
        spent = self.age(entry, now_ns)
        if entry[AGE_KNOWN]:
            self.outcomes.observe(self.outcomes.state_durations, (entry[PORT], _TIME_WAIT), spent)
            self.count_stuck(entry, spent)
        self.cancel(entry, now_ns)

    def due(self, now_ns: int) -> bool:
        fifo, ends = self.fifo, self.extended_ends
        return bool(fifo and fifo[0][SINCE] <= now_ns - self.timewait_ns or ends and ends[0][0] <= now_ns)

    def expire(self, now_ns: int) -> None:
        """Ends the TIME_WAITs whose time is up (the caller holds the lock)."""
        fifo = self.fifo
        horizon = now_ns - self.timewait_ns
        while fifo and fifo[0][SINCE] <= horizon:
            entry = fifo.popleft()
            if not entry[EXPIRES]:  # the kernel's timer decides an extended one's end
                self._leave(entry, entry[SINCE] + self.timewait_ns)
        ends, extended = self.extended_ends, self.extended
        while ends and ends[0][0] <= now_ns:
            at, _, entry = heappop(ends)
            if entry[EXPIRES] == at and extended.get(entry[CONN]) is entry:
                self._leave(entry, at)

    def extend(self, entry: TimeWait, expires_ns: int) -> None:
        """The kernel's timer ends this TIME_WAIT, at ``expires_ns``."""
        entry[EXPIRES] = expires_ns
        extended, ends = self.extended, self.extended_ends
        extended[entry[CONN]] = entry
        heappush(ends, (expires_ns, next(self._tie), entry))
        if len(ends) > 2 * len(extended) + FIFO_SLACK:  # ends that no longer hold keep their entries
            self.extended_ends = [(e[EXPIRES], next(self._tie), e) for e in extended.values()]
            heapify(self.extended_ends)

    def entries(self) -> list[TimeWait]:
        return list(self.by_conn.values())
