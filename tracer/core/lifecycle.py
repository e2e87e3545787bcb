"""A socket's life: who it was and each state it was in, in the two shapes it takes.

``RawLife`` is what the tracker hands the store (open lives as they change, ended
ones once, when the socket ends, TIME_WAIT included): the kernel's raw fields and
monotonic nanoseconds. ``Lifecycle`` is what the store gives back and the API and
the page show: text, and Unix seconds to the microsecond.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tracer.core.record import MORE_AT, MORE_STATE_AT, MORE_TS_AT, comm_text, family_name, format_addr, unpack_from
from tracer.core.closes import HOW_NAMES, closer_of, how_code
from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, ROLE_NAMES, STATE_NAMES, EventKind

KIND_NAMES = {EventKind.RETRANSMIT.value: "retransmit", EventKind.RESET_TX.value: "reset_sent",
              EventKind.RESET_RX.value: "reset_received"}


class RawLife(NamedTuple):
    """A life as the tracker hands it to the store, with the kernel's raw fields and
    monotonic nanoseconds: a tuple, cheap to make for every socket at full churn (the
    tracker builds plain tuples in this order; tests build it by name). The store
    turns it into its row without a Lifecycle in between (tracer/store/rows.py);
    ``from_raw`` makes the Lifecycle for the rest."""

    id: int  # unique across daemon restarts
    netns: int  # 0: not known
    family: int  # AF_INET or AF_INET6
    saddr: bytes  # 16 bytes; an IPv4 address in the first 4
    sport: int
    daddr: bytes
    dport: int
    role: int  # states.Role
    service_port: int
    pid: int  # 0: not known
    comm: bytes  # 16 bytes, NUL-padded
    history: tuple[int, ...]  # flat: (state, since_ns, state, since_ns, ...), oldest first
    end_ns: int | None  # None while the socket is alive (TIME_WAIT included)
    how: int = 0  # how this end finished (closes.HOW_CODES), 0: not known (yet)
    # Retransmissions and resets, flat: (dropped, kind, state, ts_ns, kind, state, ts_ns, ...),
    # the latest MARKS_MAX of them after ``dropped`` earlier ones; () for none.
    marks: tuple[int, ...] = ()


MARKS_MAX = 32

# An ended life waiting for the store, packed: about 190 bytes where its tuple and
# integers take 600, so that a burst of churn the store cannot follow at once waits
# in memory it can afford (tracer/core/tracker.py PENDING_LIVES_MAX).
_PACKED_HEAD = "<QQBB16s16sHHHI16sqBHB"  # ... how, the marks' length, the number of spans last
_PACKED_HEAD_SIZE = struct.calcsize(_PACKED_HEAD)
_HOW_AT = _PACKED_HEAD_SIZE - 4
_packers: dict[tuple[int, int], struct.Struct] = {}


def packer(spans: int, marks: int) -> struct.Struct:
    """(id, netns, family, role, saddr, daddr, sport, dport, service_port, pid, comm,
    end_ns, how, marks, spans, the spans' states as bytes, each span's since_ns, then
    the marks' integers)."""
    got = _packers.get((spans, marks))
    if got is None:
        got = _packers[(spans, marks)] = struct.Struct(f"{_PACKED_HEAD}{spans}s{spans}Q{marks}q")
    return got


def pack_ended(raw: RawLife) -> bytes:
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns, how, marks = raw
    n, m = len(history) // 2, len(marks)
    return packer(n, m).pack(uid, netns, fam, role, saddr, daddr, sport, dport, port, pid, comm, end_ns, how, m,
                             n, bytes(history[0::2]), *history[1::2], *marks)


def set_packed_how(packed: bytes, how: int) -> bytes:
    return b"".join((packed[:_HOW_AT], bytes((how,)), packed[_HOW_AT + 1:]))


def unpack_ended(packed: bytes) -> RawLife:
    """The life ``pack_ended`` packed, as a plain tuple in RawLife's order (making the
    NamedTuple itself would cost every ended life a Python-level call)."""
    n = packed[_PACKED_HEAD_SIZE - 1]
    m = int.from_bytes(packed[_PACKED_HEAD_SIZE - 3:_PACKED_HEAD_SIZE - 1], "little")
    f = packer(n, m).unpack(packed)
    uid, netns, fam, role, saddr, daddr, sport, dport, port, pid, comm, end_ns, how, _, _, states = f[:16]
    history = [0] * (2 * n)
    history[0::2] = states
    history[1::2] = f[16:16 + n]
    return (uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, tuple(history), end_ns, how,
            f[16 + n:])


def ended_with_how(item: bytes | tuple, how: int) -> bytes | tuple:
    """An ended life as the journal keeps it (``pack_ended``'s bytes, or ``record_life``'s
    arguments) with how it closed set to ``how``."""
    if type(item) is bytes:
        return set_packed_how(item, how)
    return (*item[:6], how)


@dataclass(frozen=True)
class Span:
    state: str  # TcpState name
    since: float
    until: float | None  # None: the socket is in this state now


@dataclass(frozen=True)
class Mark:
    kind: str  # "retransmit", "reset_sent", "reset_received"
    state: str  # the state it happened in (TcpState name)
    at: float


@dataclass(frozen=True)
class Lifecycle:
    id: int  # unique across daemon restarts (the store hands out the first one)
    netns: int | None
    family: str  # "ipv4" or "ipv6"
    laddr: str
    lport: int
    raddr: str
    rport: int
    role: str  # "active", "passive", "listener", "unknown"
    service_port: int
    pid: int | None
    comm: str | None
    open: bool  # still alive (TIME_WAIT counts as alive)
    states: list[Span] = field(default_factory=list)
    closer: str | None = None  # who sent the first FIN (closes.CLOSERS); None: no FIN yet, or no connection
    how: str | None = None  # how this end finished (closes.HOWS); None: not known (yet)
    marks: list[Mark] = field(default_factory=list)  # retransmissions and resets, oldest first
    marks_dropped: int = 0  # earlier ones not kept (MARKS_MAX)

    @property
    def one_way(self) -> tuple[float, float | None] | None:
        """When the connection ran one way: from the first FIN (ours, or the peer's) to
        the second; None before the first FIN. Ours first: FIN_WAIT1 (or FIN_WAIT2, found
        there) until the peer's FIN turns it into CLOSING or TIME_WAIT; the peer's first:
        CLOSE_WAIT until our FIN (LAST_ACK), or its end."""
        if self.closer is None or self.closer == "none":
            return None
        names = [s.state for s in self.states]
        if self.closer == "peer":
            if "CLOSE_WAIT" not in names:
                return None
            i = names.index("CLOSE_WAIT")
            end = next((s.since for s in self.states[i + 1:] if s.state != "CLOSE_WAIT"), self.states[i].until)
            return self.states[i].since, end
        i = next((i for i, n in enumerate(names) if n in ("FIN_WAIT1", "FIN_WAIT2")), None)
        if i is None:
            return None
        end = next((s.since for s in self.states[i + 1:] if s.state in ("CLOSING", "TIME_WAIT")), None)
        return self.states[i].since, end

    @property
    def started(self) -> float:
        return self.states[0].since

    @property
    def ended(self) -> float | None:
        return None if self.open else self.states[-1].until

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "netns": self.netns, "family": self.family,
            "laddr": self.laddr, "lport": self.lport, "raddr": self.raddr, "rport": self.rport,
            "role": self.role, "service_port": self.service_port, "pid": self.pid, "comm": self.comm,
            "open": self.open,
            "states": [{"state": s.state, "since": s.since, "until": s.until} for s in self.states],
            "closer": self.closer, "how": self.how,
            "one_way": None if (w := self.one_way) is None else {"since": w[0], "until": w[1]},
            "marks": [{"kind": m.kind, "state": m.state, "at": m.at} for m in self.marks],
            "marks_dropped": self.marks_dropped,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Lifecycle":
        states = [Span(s["state"], s["since"], s["until"]) for s in obj["states"]]
        marks = [Mark(m["kind"], m["state"], m["at"]) for m in obj.get("marks", ())]
        return cls(**{k: v for k, v in obj.items() if k not in ("states", "marks", "one_way")},
                   states=states, marks=marks)


def from_raw(raw: RawLife, wall: Callable[[int], float]) -> Lifecycle:
    """The Lifecycle of a raw life; ``wall`` turns monotonic nanoseconds into Unix seconds."""
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns, how, marks = raw
    spans = []
    for i in range(0, len(history), 2):
        state, since = history[i], history[i + 1]
        until = history[i + 3] if i + 2 < len(history) else end_ns
        spans.append(Span(STATE_NAMES[state], round(wall(since), 6),
                          None if until is None else round(wall(until), 6)))
    return Lifecycle(
        id=uid, netns=netns or None, family=family_name(fam), laddr=format_addr(fam, saddr), lport=sport,
        raddr=format_addr(fam, daddr), rport=dport, role=ROLE_NAMES.get(role, "unknown"),
        service_port=port, pid=pid or None, comm=comm_text(comm) or None, open=end_ns is None,
        states=spans, closer=closer_now(history[0::2], end_ns is None), how=HOW_NAMES[how],
        marks=[Mark(KIND_NAMES[marks[i]], STATE_NAMES[marks[i + 1]], round(wall(marks[i + 2]), 6))
               for i in range(1, len(marks), 3)],
        marks_dropped=marks[0] if marks else 0)


def closer_now(states: Sequence[int], alive: bool) -> str | None:
    """Who sent the first FIN, as the timeline shows it: an open socket that sent or
    took no FIN yet has no closer."""
    closer = closer_of(states)
    return None if alive and closer == "none" else closer


_TIME_WAIT = 6  # TcpState.TIME_WAIT


_SHUT = F_SHUT_WR | F_SHUT_RDWR
_hows: dict[tuple[int, bytes, int], int] = {}  # (first state, more_state, shutdown flags) -> how code


def record_life(uid: int, netns: int, data: bytes, offset: int, timewait: bool, end_ns: int | None,
                how: int = -1) -> RawLife:
    """The RawLife of a socket born and closed in one kernel record (tracer/core/record.py)
    at ``offset`` in ``data``, which the tracker's short path took whole: without a
    TIME_WAIT it ended at the record's close; with one, its TIME_WAIT began there and
    ended at ``end_ns`` (None: it goes on). How it closed comes from the record's
    states and flags (it holds no reset), unless ``how`` says (a reset that came after)."""
    rec = unpack_from(data, offset)
    more = rec[MORE_AT]
    codes, stamps = rec[MORE_STATE_AT], rec[MORE_TS_AT:MORE_TS_AT + more]
    history = [rec[11], rec[0]]
    for i in range(more - 1):
        history += (codes[i] & 15, stamps[i])
    end = stamps[-1]
    if timewait:
        history += (_TIME_WAIT, end)
        end = end_ns
    if how < 0:
        key = (rec[11], codes, rec[13] & _SHUT)
        how = _hows.get(key, -1)
        if how < 0:
            if len(_hows) >= 4096:
                _hows.clear()
            how = _hows[key] = how_code(history[0::2], rec[13], 0)
    return (uid, netns, rec[8], rec[2], rec[5], rec[3], rec[6], rec[12], rec[7], rec[4], rec[14], tuple(history), end,
            how, ())
