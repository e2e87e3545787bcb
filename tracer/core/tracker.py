"""The socket table: each socket's current state, since when, and what it is.

One writer applies events; readers take snapshots under the same lock. The
tracepoint never reports TIME_WAIT, so the tracker models it: an orderly active
close (FIN_WAIT1, FIN_WAIT2 or CLOSING to CLOSE, no reset) hands the connection to
a timewait mini-socket that lives for the kernel's TIME_WAIT length (2 MSL on
Linux: TCP_TIMEWAIT_LEN, 60 s). The model cannot see a TIME_WAIT timer re-armed by
a retransmitted FIN; only the kernel's socket table shows that.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tracer.core.record import Event
from tracer.core.states import ACTIVE_CLOSE_STATES, F_ROLE_INFERRED, EventKind, Role, TcpState

_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value
_SYN_SENT = TcpState.SYN_SENT.value
_ACTIVE_CLOSE = frozenset(int(s) for s in ACTIVE_CLOSE_STATES)
_STATE = EventKind.STATE.value

# A connection as the kernel's socket table keys it: (local address, local port,
# remote address, remote port); addresses are the record's 16 raw bytes.
Conn = tuple[bytes, int, bytes, int]


class SocketEntry:
    """What the table knows of one socket. ``since_ns`` is monotonic kernel time."""

    __slots__ = (
        "sk", "state", "since_ns", "first_ns", "port", "role", "family", "saddr", "sport",
        "daddr", "dport", "pid", "comm", "flags", "reset",
    )

    def __init__(self, ev: Event) -> None:
        ts, sk, saddr, daddr, pid, sport, dport, svc, fam, _kind, _old, new, role, flags, comm = ev
        self.sk = sk
        self.state = new
        self.since_ns = ts
        self.first_ns = ts
        self.port = svc
        self.role = role
        self.family = fam
        self.saddr = saddr
        self.sport = sport
        self.daddr = daddr
        self.dport = dport
        self.pid = pid
        self.comm = comm
        self.flags = flags
        self.reset = False


def _entry_for(conn: Conn, since_ns: int) -> SocketEntry:
    """An entry for a TIME_WAIT known only from the kernel's socket table."""
    saddr, sport, daddr, dport = conn
    fam = 2 if saddr[4:] == bytes(12) and daddr[4:] == bytes(12) else 10
    # Role and service port are unknown from the table alone; the remote port is
    # the usual service port of an active closer.
    return SocketEntry((since_ns, 0, saddr, daddr, 0, sport, dport, dport, fam, _STATE, 0,
                        _TIME_WAIT, Role.UNKNOWN.value, F_ROLE_INFERRED, bytes(16)))


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


class Tracker:
    """Applies events to the socket table and keeps per-(port, state) counts."""

    def __init__(self, timewait_ns: int, max_sockets: int) -> None:
        if timewait_ns <= 0 or max_sockets <= 0:
            raise ValueError("timewait_ns and max_sockets must be positive")
        self.timewait_ns = timewait_ns
        self.max_sockets = max_sockets
        self.lock = threading.Lock()
        self.sockets: dict[int, SocketEntry] = {}
        # Sockets now modelled in TIME_WAIT, oldest first: all share one length, so
        # a FIFO is also the expiry order.
        self.timewait: deque[SocketEntry] = deque()
        # The same entries by connection (local address and port, remote address
        # and port): how a reset that follows the close finds them (the kernel sets
        # CLOSE before it sends an abortive reset), and how the kernel's socket
        # table is matched against them.
        self._timewait_by_conn: dict[Conn, SocketEntry] = {}
        # (service port, state) -> sockets now in it. Keys are kept at zero, so a
        # port in use keeps its series.
        self.counts: dict[tuple[int, int], int] = {}
        self.events = 0
        self.evicted = 0
        self.timewait_now = 0  # live entries in self.timewait (cancelled ones excluded)
        self.timewait_entered = 0
        self.timewait_cancelled = 0
        self.timewait_reused = 0
        self.timewait_reconciled_removed = 0
        self.timewait_reconciled_added = 0

    # -- writer side -------------------------------------------------------------

    def apply(self, ev: Event) -> int:
        """Applies one event; returns the nanoseconds the socket spent in its
        previous state, or -1 when that is not known."""
        self.events += 1
        if ev[9] != _STATE:
            self._reset(ev)
            return -1
        counts = self.counts
        sk = ev[1]
        new = ev[11]
        svc = ev[7]
        entry = self.sockets.get(sk)
        if entry is None:
            spent = -1
            entry = SocketEntry(ev)
            old = ev[10]
            if new != _CLOSE:
                self._insert(entry)
        else:
            spent = ev[0] - entry.since_ns
            old = entry.state
            key = (entry.port, old)
            counts[key] -= 1
            entry.state = new
            entry.since_ns = ev[0]
            entry.port = svc
            entry.sport = ev[5]  # 0 until connect() has bound the socket
            entry.saddr = ev[2]
            if ev[4]:
                entry.pid = ev[4]
                entry.comm = ev[14]
            entry.flags = ev[13]
            if new == _CLOSE:
                del self.sockets[sk]
            elif old == _SYN_SENT and self._timewait_by_conn:
                # tcp_tw_reuse: a connect() may take over a TIME_WAIT of the same connection.
                earlier = self._timewait_by_conn.get((ev[2], ev[5], ev[3], ev[6]))
                if earlier is not None:
                    self._cancel_timewait(earlier)
                    self.timewait_reused += 1
        if new == _CLOSE:
            if old in _ACTIVE_CLOSE and not entry.reset:
                self._enter_timewait(entry)
        else:
            key = (svc, new)
            counts[key] = counts.get(key, 0) + 1
        return spent

    def apply_batch(self, batch: Iterable[Event]) -> None:
        apply = self.apply
        with self.lock:
            for ev in batch:
                apply(ev)

    def expire(self, now_ns: int) -> None:
        """Ends the modelled TIME_WAITs older than the TIME_WAIT length."""
        tw = self.timewait
        horizon = now_ns - self.timewait_ns
        if not tw or tw[0].since_ns > horizon:
            return
        with self.lock:
            while tw and tw[0].since_ns <= horizon:
                self._leave_timewait(tw.popleft())

    def _insert(self, entry: SocketEntry) -> None:
        sockets = self.sockets
        if len(sockets) >= self.max_sockets:
            oldest = sockets.pop(next(iter(sockets)))
            self.counts[(oldest.port, oldest.state)] -= 1
            self.evicted += 1
        sockets[entry.sk] = entry
        key = (entry.port, entry.state)
        self.counts.setdefault(key, 0)

    def _enter_timewait(self, entry: SocketEntry) -> None:
        conn = (entry.saddr, entry.sport, entry.daddr, entry.dport)
        earlier = self._timewait_by_conn.get(conn)
        if earlier is not None:  # the kernel holds one TIME_WAIT per connection
            self._cancel_timewait(earlier)
            self.timewait_reused += 1
        while self.timewait_now >= self.max_sockets:
            oldest = self.timewait.popleft()
            if oldest.state == _TIME_WAIT:  # entries cancelled by a reset hold no slot
                self.evicted += 1
            self._leave_timewait(oldest)
        entry.state = _TIME_WAIT
        self.timewait.append(entry)
        self._timewait_by_conn[conn] = entry
        key = (entry.port, _TIME_WAIT)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.timewait_now += 1
        self.timewait_entered += 1

    def _leave_timewait(self, entry: SocketEntry) -> None:
        if entry.state == _TIME_WAIT:  # not cancelled by a reset meanwhile
            self.counts[(entry.port, _TIME_WAIT)] -= 1
            self.timewait_now -= 1
            entry.state = _CLOSE
        conn = (entry.saddr, entry.sport, entry.daddr, entry.dport)
        if self._timewait_by_conn.get(conn) is entry:
            del self._timewait_by_conn[conn]

    def _cancel_timewait(self, entry: SocketEntry) -> None:
        """Ends a TIME_WAIT before its time; the entry leaves the FIFO when it reaches the front."""
        self.counts[(entry.port, _TIME_WAIT)] -= 1
        self.timewait_now -= 1
        entry.state = _CLOSE
        del self._timewait_by_conn[(entry.saddr, entry.sport, entry.daddr, entry.dport)]

    def _reset(self, ev: Event) -> None:
        entry = self.sockets.get(ev[1])
        if entry is not None:
            entry.reset = True
            return
        entry = self._timewait_by_conn.get((ev[2], ev[5], ev[3], ev[6]))
        if entry is not None:
            self._cancel_timewait(entry)
            self.timewait_cancelled += 1

    def reconcile_timewait(self, kernel: dict[Conn, int], dumped_at_ns: int, grace_ns: int) -> tuple[int, int]:
        """Makes the modelled TIME_WAIT agree with the kernel's socket table.

        ``kernel`` maps each TIME_WAIT connection the kernel held at ``dumped_at_ns``
        to the nanoseconds its timer had left. The model misses what no tracepoint
        shows: a TIME_WAIT killed early (a reset from a peer's listener, RFC 1337;
        tcp_tw_reuse), or kept longer (a retransmitted FIN re-arms its timer). Only
        entries older than ``grace_ns`` on either side are judged, so events still
        on their way do not count as differences. Returns (removed, added).
        """
        removed = added = 0
        horizon = dumped_at_ns - grace_ns
        # Near their end the kernel's timer and the model's may disagree by a little.
        ending = dumped_at_ns - self.timewait_ns + grace_ns
        with self.lock:
            for conn, entry in list(self._timewait_by_conn.items()):
                if ending < entry.since_ns < horizon and conn not in kernel:
                    self._cancel_timewait(entry)
                    removed += 1
            for conn, remaining_ns in kernel.items():
                since = dumped_at_ns - max(0, self.timewait_ns - remaining_ns)
                if since < horizon and conn not in self._timewait_by_conn:
                    self._enter_timewait(_entry_for(conn, since))
                    added += 1
        self.timewait_reconciled_removed += removed
        self.timewait_reconciled_added += added
        return removed, added

    # -- reader side -------------------------------------------------------------

    def in_timewait(self, ev: Event) -> bool:
        """Whether the connection of this event is now modelled in TIME_WAIT."""
        return (ev[2], ev[5], ev[3], ev[6]) in self._timewait_by_conn

    def snapshot(self) -> dict[tuple[int, int], int]:
        """(service port, state) -> sockets now in that state, TIME_WAIT included."""
        with self.lock:
            return dict(self.counts)

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
            )
