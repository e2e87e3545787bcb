"""A life's row in the timeline table: made from the tracker's hand-over, read back as a Lifecycle.

This is the one way into the table (``row``, from a lifecycle.RawLife) and the one
way out (``lifecycle``), so the two agree on every encoding: times are whole
microseconds (floored from the monotonic nanoseconds plus the clock's offset),
``started`` in Unix seconds and the spans in microseconds after it, which are
cheaper to encode than floats; an address is text made once from its raw bytes and
never parsed back. The daemon writes a row for every socket at full churn, so a row
is made without a Lifecycle in between and from caches: a host talks to few
addresses and names few commands, and the sockets of a service go through a
handful of state sequences.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tracer.core.closes import HOW_NAMES
from tracer.core.lifecycle import KIND_NAMES, Lifecycle, Mark, RawLife, Span, closer_now
from tracer.core.record import AF_INET, AF_INET6, comm_text, format_addr
from tracer.core.states import ROLE_NAMES, STATE_NAMES
from tracer.store.schema import bucket

CACHE_MAX = 65536  # entries of each cache below; past it the cache starts again empty
_V4_MAPPED = bytes(10) + b"\xff\xff"

_addrs: dict[tuple[int, bytes], tuple[str, int, str | None]] = {}
_comms: dict[bytes, str | None] = {}
_templates: dict[tuple[tuple[int, ...], bool], tuple[str, int, str | None]] = {}
encode_json = json.JSONEncoder(separators=(",", ":")).encode


def stored_addr(family: int, raw: bytes) -> tuple[str, int, str | None]:
    """(the address as the table indexes and compares it, its bucket, the text the
    socket had when that differs). An IPv4-mapped IPv6 address is indexed as IPv4, as
    the API's ``addr`` filter normalises it (tracer.store.normalise_addr), and keeps
    its IPv6 text for reading back."""
    got = _addrs.get((family, raw))
    if got is None:
        if len(_addrs) >= CACHE_MAX:
            _addrs.clear()
        text = None
        if family == AF_INET6 and raw[:12] == _V4_MAPPED:
            addr, text = format_addr(AF_INET, raw[12:16]), format_addr(AF_INET6, raw)
        else:
            addr = format_addr(family, raw)
        got = _addrs[(family, raw)] = (addr, bucket(addr), text)
    return got


def _comm(raw: bytes) -> str | None:
    got = _comms.get(raw, False)
    if got is False:
        if len(_comms) >= CACHE_MAX:
            _comms.clear()
        got = _comms[raw] = comm_text(raw) or None
    return got


def _template(states: tuple[int, ...], alive: bool) -> tuple[str, int, str | None]:
    """The spans' JSON for a sequence of states, with {i} where time i goes (0 is the
    start, i the start of span i, the last the end), the states' bits, and who closed
    first (lifecycle.closer_now)."""
    got = _templates.get((states, alive))
    if got is None:
        if len(_templates) >= CACHE_MAX:
            _templates.clear()
        mask, parts = 0, []
        for i, state in enumerate(states):
            mask |= 1 << state
            until = "null" if alive and i == len(states) - 1 else "{%d}" % (i + 1)
            parts.append('["%s",{%d},%s]' % (STATE_NAMES[state], i, until))
        got = _templates[(states, alive)] = ("[" + ",".join(parts) + "]", mask, closer_now(states, alive))
    return got


def _marks(marks: tuple[int, ...], offset_ns: int, t0: int) -> str | None:
    if not marks:
        return None
    return encode_json([marks[0], [[KIND_NAMES[marks[i]], STATE_NAMES[marks[i + 1]],
                                    (marks[i + 2] + offset_ns) // 1000 - t0] for i in range(1, len(marks), 3)]])


def row(raw: RawLife, offset_ns: int) -> tuple:
    """The row (schema.WRITTEN's columns) of a life; ``offset_ns`` turns its monotonic
    times into Unix ones (Clock.offset_ns). IndexError for a life without history,
    TypeError or ValueError for fields of the wrong kind: the caller drops it."""
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns, how, marks = raw
    us = [(t + offset_ns) // 1000 for t in history[1::2]]
    t0 = us[0]
    alive = end_ns is None
    rel = [u - t0 for u in us]
    if not alive:
        rel.append((end_ns + offset_ns) // 1000 - t0)
    spans, mask, closer = _template(history[::2], alive)
    laddr, lbucket, ltext = stored_addr(fam, saddr)
    raddr, rbucket, rtext = stored_addr(fam, daddr)
    return (uid, netns or None, "ipv4" if fam == AF_INET else "ipv6", laddr, sport, raddr, dport,
            ROLE_NAMES.get(role, "unknown"), port, pid or None, _comm(comm), 1 if alive else 0,
            t0 / 1e6, None if alive else (t0 + rel[-1]) / 1e6, mask, spans.format(*rel), ltext, rtext,
            t0 // 1_000_000, lbucket, rbucket, closer, HOW_NAMES[how], _marks(marks, offset_ns, t0))


def _at(t0: float, us: int) -> float:
    return round(t0 + us / 1e6, 6)


def lifecycle(read: Sequence) -> Lifecycle:
    """The Lifecycle of a row read with schema.READ's columns."""
    (id_, netns, family, laddr, lport, raddr, rport, role, port, pid, comm, open_, spans,
     laddr_text, raddr_text, t0, closer, how, marks_json) = read
    states = [Span(state, _at(t0, since), None if until is None else _at(t0, until))
              for state, since, until in json.loads(spans)]
    dropped, marks = json.loads(marks_json) if marks_json else (0, ())
    return Lifecycle(id=id_, netns=netns, family=family, laddr=laddr_text or laddr, lport=lport,
                     raddr=raddr_text or raddr, rport=rport, role=role, service_port=port, pid=pid,
                     comm=comm, open=bool(open_), states=states, closer=closer, how=how,
                     marks=[Mark(kind, state, _at(t0, at)) for kind, state, at in marks], marks_dropped=dropped)


def closed(t0: float, spans_json: str, ended_at: float) -> tuple[float, str]:
    """(ended, spans) of a row left open, its last state ended at ``ended_at`` or where
    it began, when that is later."""
    spans = json.loads(spans_json)
    last = spans[-1]
    if last[2] is None:
        last[2] = max(round((ended_at - t0) * 1e6), last[1])
    return _at(t0, last[2]), encode_json(spans)
