"""The socket table: each full socket's current state, since when, and who it is.

Keyed by the socket's address (skaddr) while it lives. ``counts`` holds, by (service
port, state), the sockets now in each state: the table's and the TIME_WAIT model's
(which shares it); keys stay at zero, so a port in use keeps its series. Sockets the
kernel's table showed at start wait in ``baseline`` (by connection) until an event
names them.
"""

from __future__ import annotations

import numpy as np

from tracer.core.closes import how_code
from tracer.core.kernel_socket import Conn, KernelSocket
from tracer.core.lifecycle import MARKS_MAX
from tracer.core.record import Event, comm_raw
from tracer.core.states import F_ROLE_INFERRED, EventKind, TcpState

_CLOSE = TcpState.CLOSE.value
_LISTEN_OR_CLOSE = frozenset({TcpState.CLOSE.value, TcpState.LISTEN.value})
_STATE = EventKind.STATE.value

# Addresses and command names, one bytes object for each value: every record brings
# its own copies, and a host holding many connections to a few peers would keep three
# of them a socket (tests/bench/tracker_memory.py).
_INTERNED_MAX = 1 << 16
_interned: dict[bytes, bytes] = {}


def intern(value: bytes) -> bytes:
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
    ``history`` is flat, [state, since_ns, state, since_ns, ...]: a list of pairs
    costs a tuple per transition. ``retransmits`` counts the segments retransmitted in
    the socket's latest state that had any (a LAST_ACK socket's are its FIN).
    """

    __slots__ = (
        "sk", "state", "since_ns", "first_ns", "port", "role", "family", "saddr", "sport",
        "daddr", "dport", "pid", "comm", "flags", "reset", "netns", "age_known", "expires_ns",
        "stuck_state", "opened", "uid", "history", "ended_ns", "retransmits", "marks",
        "closed_by_owner",
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
        self.saddr = intern(saddr)
        self.sport = sport
        self.daddr = intern(daddr)
        self.dport = dport
        self.pid = pid
        self.comm = intern(comm)
        self.flags = flags
        self.reset = 0  # the kind of the last reset seen (EventKind.RESET_*), 0: none
        self.netns = 0  # unknown until the kernel's table names it
        self.age_known = True
        self.expires_ns = 0  # a TIME_WAIT found in the kernel's table: when its timer ends
        self.stuck_state = 0  # the state this socket was last counted stuck in
        self.opened = old in _LISTEN_OR_CLOSE  # seen opening: first_ns is its birth
        self.uid = 0  # the timeline's id, given when the table takes the socket
        # (state, since) for the timeline; a socket first seen at its close was in `old`.
        self.history: list[int] = [old if new == _CLOSE else new, ts]
        self.ended_ns = 0
        # Segments the kernel retransmitted, [state, in that state, last_ns, in all], or None:
        # most sockets never retransmit, and pay nothing for it.
        self.retransmits: list[int] | None = None
        # Its retransmissions and resets for the timeline (lifecycle.RawLife.marks), or None.
        self.marks: list[int] | None = None
        # close() came after shutdown(): the tracepoint's FIN_WAIT1 -> FIN_WAIT1 or
        # FIN_WAIT2 -> FIN_WAIT2. The socket is an orphan from then on.
        self.closed_by_owner = False

    @property
    def conn(self) -> Conn:
        return (self.saddr, self.sport, self.daddr, self.dport)

    @classmethod
    def from_kernel(cls, k: KernelSocket, since_ns: int, role: int, port: int) -> "SocketEntry":
        comm = comm_raw(k.comm)
        entry = cls((since_ns, 0, k.saddr, k.daddr, k.pid, k.sport, k.dport, port, k.family, _STATE, 0,
                     k.state, role, F_ROLE_INFERRED, comm))
        entry.netns = k.netns
        entry.age_known = False
        return entry

    def mark(self, kind: int, state: int, ts: int) -> None:
        """A retransmission or a reset, for the timeline: the latest MARKS_MAX are kept."""
        marks = self.marks
        if marks is None:
            self.marks = [0, kind, state, ts]
            return
        marks += (kind, state, ts)
        if len(marks) > 1 + 3 * MARKS_MAX:
            del marks[1:4]
            marks[0] += 1

    def raw_life(self, end_ns: int | None = None, uid: int | None = None, netns: int | None = None) -> tuple:
        """The life as lifecycle.RawLife: open, or ended at ``end_ns`` (its TIME_WAIT's
        ``uid`` and ``netns`` when that holds it)."""
        history = tuple(self.history)
        return (self.uid if uid is None else uid, self.netns if netns is None else netns, self.family, self.saddr,
                self.sport, self.daddr, self.dport, self.role, self.port, self.pid, self.comm, history, end_ns,
                how_code(history[0::2], self.flags, self.reset), () if self.marks is None else tuple(self.marks))


class SocketTable:
    def __init__(self, max_sockets: int, counts: dict) -> None:
        self.max_sockets = max_sockets
        self.counts = counts
        self.sockets: dict[int, SocketEntry] = {}
        self.baseline: dict[Conn, SocketEntry] = {}
        self._baseline_ports: tuple[int, np.ndarray] | None = None  # (baseline size, its local ports)
        self.evicted = 0
        self.removed = 0  # sockets the kernel no longer had (gone)
        self.corrected = 0  # sockets the kernel had in another state
        self.baseline_sockets = 0
        self._synthetic_sk = 0  # keys for sockets known only from the kernel's table

    def __len__(self) -> int:
        return len(self.sockets)

    def insert(self, entry: SocketEntry) -> SocketEntry | None:
        """Adds a socket; past max_sockets the oldest is evicted and returned."""
        sockets = self.sockets
        oldest = None
        if len(sockets) >= self.max_sockets:
            oldest = sockets.pop(next(iter(sockets)))
            self.counts[(oldest.port, oldest.state)] -= 1
            if self.baseline.get(oldest.conn) is oldest:
                del self.baseline[oldest.conn]
            self.evicted += 1
        sockets[entry.sk] = entry
        self.counts.setdefault((entry.port, entry.state), 0)
        return oldest

    def remove(self, entry: SocketEntry) -> None:
        """Takes a socket the kernel no longer has out of the table."""
        del self.sockets[entry.sk]
        self.counts[(entry.port, entry.state)] -= 1
        if self.baseline.get(entry.conn) is entry:
            del self.baseline[entry.conn]
        self.removed += 1

    def baseline_ports(self) -> np.ndarray:
        """The local ports of the baseline's connections, sorted; kept until the baseline
        changes (after the start it only shrinks, so its size tells)."""
        cached = self._baseline_ports
        if cached is None or cached[0] != len(self.baseline):
            ports = np.unique(np.fromiter((c[1] for c in self.baseline), dtype=np.int64, count=len(self.baseline)))
            cached = self._baseline_ports = (len(self.baseline), ports)
        return cached[1]

    def add_baseline(self, entry: SocketEntry) -> None:
        self._baseline_ports = None
        self._synthetic_sk -= 1
        entry.sk = self._synthetic_sk
        self.insert(entry)
        self.counts[(entry.port, entry.state)] += 1
        self.baseline[entry.conn] = entry

    def adopt(self, sk: int, conn: Conn) -> SocketEntry | None:
        """The first event of a socket loaded from the kernel's table: it gets its identity."""
        entry = self.baseline.pop(conn, None)
        if entry is not None:
            del self.sockets[entry.sk]
            entry.sk = sk
            self.sockets[sk] = entry
        return entry

    def drop_twin(self, conn: Conn) -> SocketEntry | None:
        """A socket opened while the baseline was read: the kernel's table had it too,
        and its loaded twin goes (it never becomes a life of its own)."""
        twin = self.baseline.pop(conn, None)
        if twin is not None:
            del self.sockets[twin.sk]
            self.counts[(twin.port, twin.state)] -= 1
            self.baseline_sockets -= 1
        return twin

    def move(self, entry: SocketEntry, state: int, at_ns: int) -> None:
        """The kernel's table has this socket in another state: a transition was missed."""
        counts = self.counts
        counts[(entry.port, entry.state)] -= 1
        entry.state = state
        entry.since_ns = at_ns
        entry.history += (state, at_ns)
        entry.age_known = False
        key = (entry.port, state)
        counts[key] = counts.get(key, 0) + 1
        self.corrected += 1
