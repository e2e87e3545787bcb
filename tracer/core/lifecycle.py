"""A socket's life: who it was and each state it was in, in the two shapes it takes.

``RawLife`` is what the tracker hands the store (open lives as they change, ended
ones once, when the socket ends, TIME_WAIT included): the kernel's raw fields and
monotonic nanoseconds. ``Lifecycle`` is what the store gives back and the API and
the page show: text, and Unix seconds to the microsecond.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tracer.core.record import MORE_AT, MORE_STATE_AT, MORE_TS_AT, comm_text, family_name, format_addr, unpack_from
from tracer.core.states import ROLE_NAMES, STATE_NAMES


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


# An ended life waiting for the store, packed: about 190 bytes where its tuple and
# integers take 600, so that a burst of churn the store cannot follow at once waits
# in memory it can afford (tracer/core/tracker.py PENDING_LIVES_MAX).
_PACKED_HEAD = "<QQBB16s16sHHHI16sqB"  # ... the number of spans last
_PACKED_HEAD_SIZE = struct.calcsize(_PACKED_HEAD)
_packers: dict[int, struct.Struct] = {}


def packer(spans: int) -> struct.Struct:
    """(id, netns, family, role, saddr, daddr, sport, dport, service_port, pid, comm,
    end_ns, spans, the spans' states as bytes, then each span's since_ns)."""
    got = _packers.get(spans)
    if got is None:
        got = _packers[spans] = struct.Struct(f"{_PACKED_HEAD}{spans}s{spans}Q")
    return got


def pack_spans(uid: int, netns: int, fam: int, saddr: bytes, sport: int, daddr: bytes, dport: int, role: int,
               port: int, pid: int, comm: bytes, states: bytes, since: list[int] | tuple[int, ...],
               end_ns: int) -> bytes:
    """An ended life packed from its spans: each one's state (as bytes) and since_ns."""
    n = len(states)
    return packer(n).pack(uid, netns, fam, role, saddr, daddr, sport, dport, port, pid, comm, end_ns, n,
                          states, *since)


def pack_ended(raw: RawLife) -> bytes:
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns = raw
    return pack_spans(uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm,
                      bytes(history[0::2]), history[1::2], end_ns)


def unpack_ended(packed: bytes) -> RawLife:
    """The life ``pack_ended`` packed, as a plain tuple in RawLife's order (making the
    NamedTuple itself would cost every ended life a Python-level call)."""
    n = packed[_PACKED_HEAD_SIZE - 1]
    f = packer(n).unpack(packed)
    uid, netns, fam, role, saddr, daddr, sport, dport, port, pid, comm, end_ns, _, states = f[:14]
    history = [0] * (2 * n)
    history[0::2] = states
    history[1::2] = f[14:]
    return (uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, tuple(history), end_ns)


@dataclass(frozen=True)
class Span:
    state: str  # TcpState name
    since: float
    until: float | None  # None: the socket is in this state now


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
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Lifecycle":
        states = [Span(s["state"], s["since"], s["until"]) for s in obj["states"]]
        return cls(**{k: v for k, v in obj.items() if k != "states"}, states=states)


def from_raw(raw: RawLife, wall: Callable[[int], float]) -> Lifecycle:
    """The Lifecycle of a raw life; ``wall`` turns monotonic nanoseconds into Unix seconds."""
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns = raw
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
        states=spans)


_TIME_WAIT = 6  # TcpState.TIME_WAIT


def record_life(uid: int, netns: int, data: bytes, offset: int, timewait: bool, end_ns: int | None) -> RawLife:
    """The RawLife of a socket born and closed in one kernel record (tracer/core/record.py)
    at ``offset`` in ``data``, which the tracker's short path took whole: without a
    TIME_WAIT it ended at the record's close; with one, its TIME_WAIT began there and
    ended at ``end_ns`` (None: it goes on)."""
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
    return (uid, netns, rec[8], rec[2], rec[5], rec[3], rec[6], rec[12], rec[7], rec[4], rec[14], tuple(history), end)
