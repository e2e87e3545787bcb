"""The event record, mirrored once from bpf/tcpstates.h.

An event is a plain tuple in the C field order: tuples come straight out of
``struct.iter_unpack`` with no per-event object to build, which keeps the hot path
near a microsecond. ``Field`` indexes name the positions for code off that path.
JSON lines (``watch --json``, ``--record``, replay fixtures) are the stable text
form of the same record.

The kernel's record is an event plus the transitions that followed it: a young
socket's whole life travels as one record (``more`` > 0). ``events_of`` gives the
events such a record stands for, exactly those the program would have sent one by
one; ``pack`` is the inverse, for tests and benchmarks.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from tracer.core.states import ROLE_NAMES, EventKind, Role, TcpState

# (name, struct code) in C order; tests/unit/test_record.py compiles the header and
# checks names, offsets and size against this list.
FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"),
    ("skaddr", "Q"),
    ("saddr", "16s"),
    ("daddr", "16s"),
    ("pid", "I"),
    ("sport", "H"),
    ("dport", "H"),
    ("service_port", "H"),
    ("family", "B"),
    ("kind", "B"),
    ("oldstate", "B"),
    ("newstate", "B"),
    ("role", "B"),
    ("flags", "B"),
    ("comm", "16s"),
)
FORMAT = "<" + "".join(code for _, code in FIELDS)
SIZE = struct.calcsize(FORMAT)
NAMES = tuple(name for name, _ in FIELDS)

MORE = 7  # TCPSTATE_MORE
# The rest of the kernel's record: a life's later transitions.
TAIL: tuple[tuple[str, str], ...] = (
    ("more", "B"),
    ("more_state", f"{MORE}s"),  # kind << 4 | newstate
    ("more_ts", f"{MORE}Q"),
)
RECORD_FIELDS = FIELDS + TAIL
RECORD_FORMAT = "<" + "".join(code for _, code in RECORD_FIELDS)
RECORD_SIZE = struct.calcsize(RECORD_FORMAT)
RECORD_NAMES = tuple(name for name, _ in RECORD_FIELDS)
_RECORD = struct.Struct(RECORD_FORMAT)


def _offsets(fields: tuple[tuple[str, str], ...]) -> list[int]:
    """Where each field starts in the packed (``<``, no padding) layout."""
    out, at = [], 0
    for _, code in fields:
        out.append(at)
        at += struct.calcsize("<" + code)
    return out


# The same record for numpy, so that a batch of records is decoded at once, in place.
_NUMPY_CODES = {"Q": "<u8", "I": "<u4", "H": "<u2", "B": "u1", "16s": "V16",
                f"{MORE}s": ("u1", (MORE,)), f"{MORE}Q": ("<u8", (MORE,))}


def numpy_dtype(header: int = 0, stride: int = RECORD_SIZE) -> np.dtype:
    """Records at ``stride`` bytes, each behind ``header`` bytes (the ring buffer's 8)."""
    return np.dtype({"names": list(RECORD_NAMES), "formats": [_NUMPY_CODES[code] for _, code in RECORD_FIELDS],
                     "offsets": [header + o for o in _offsets(RECORD_FIELDS)], "itemsize": stride})


class RecordBatch(Sequence):
    """Records as the kernel wrote them, in one bytes object: ``array`` reads every field
    of every record at once (the tracker's short path), ``[i]`` and iteration give the
    record tuples (everything else). Records sit at ``stride`` bytes, each behind
    ``header`` bytes: the ring buffer's layout, so nothing is copied."""

    __slots__ = ("data", "header", "stride", "array", "_n")
    _dtypes: dict[tuple[int, int], np.dtype] = {}

    def __init__(self, data: bytes, header: int = 0, stride: int = RECORD_SIZE) -> None:
        if len(data) % stride:
            raise ValueError(f"{len(data)} bytes are not whole records of {stride}")
        dtype = self._dtypes.get((header, stride))
        if dtype is None:
            dtype = self._dtypes[(header, stride)] = numpy_dtype(header, stride)
        self.data, self.header, self.stride = data, header, stride
        self._n = len(data) // stride
        self.array = np.frombuffer(data, dtype=dtype)

    @classmethod
    def of(cls, records: Iterable[Record]) -> "RecordBatch":
        return cls(b"".join(_RECORD.pack(*rec) for rec in records))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("record index out of range")
        return _RECORD.unpack_from(self.data, i * self.stride + self.header)

    def __iter__(self) -> Iterator[Record]:
        for i in range(self._n):
            yield _RECORD.unpack_from(self.data, i * self.stride + self.header)

    def records(self, at: list[int]) -> list[Record]:
        """The record tuples at these indices, decoded in C."""
        offsets = (np.asarray(at, dtype=np.int64) * self.stride + self.header).tolist()
        return list(map(_RECORD.unpack_from, repeat(self.data), offsets))

    def __add__(self, other: Sequence[Record]) -> list[Record]:
        return [*self, *other]


class Field:
    """Positions of the fields in an event tuple."""

    TS, SK, SADDR, DADDR, PID, SPORT, DPORT, SERVICE_PORT = range(8)
    FAMILY, KIND, OLD, NEW, ROLE, FLAGS, COMM = range(8, 15)


AF_INET = socket.AF_INET.value
AF_INET6 = socket.AF_INET6.value
_KIND_NAMES = {k.value: k.name.lower() for k in EventKind}
_KINDS_BY_NAME = {v: k for k, v in _KIND_NAMES.items()}
_ROLES_BY_NAME = {v: k for k, v in ROLE_NAMES.items()}

Event = tuple  # the tuple described by FIELDS
Record = tuple  # the tuple described by RECORD_FIELDS: an Event, then more, more_state, *more_ts
MORE_AT, MORE_STATE_AT, MORE_TS_AT = len(FIELDS), len(FIELDS) + 1, len(FIELDS) + 2
_STATE_KIND = EventKind.STATE.value


def events_of(rec: Record) -> list[Event]:
    """The events a record stands for, in order. A later transition's old state is
    the state before it; a reset keeps the state (oldstate = newstate = the state
    its tracepoint reported, 0 for "whatever it is in now")."""
    head = rec[:MORE_AT]
    out = [head]
    more = rec[MORE_AT]
    if not more:
        return out
    codes = rec[MORE_STATE_AT]
    state = head[Field.NEW]
    for i in range(more):
        kind, new = codes[i] >> 4, codes[i] & 15
        old = new
        if kind == _STATE_KIND:
            old, state = state, new
        out.append((rec[MORE_TS_AT + i], *head[1:Field.KIND], kind, old, new, *head[Field.ROLE:]))
    return out


def pack(events: list[Event]) -> bytes:
    """The kernel's record for a socket's events in order (at most 1 + MORE): the
    first event's header with the last one's owner and ports, as the program keeps them."""
    if not 1 <= len(events) <= 1 + MORE:
        raise ValueError(f"a record holds 1 to {1 + MORE} events, got {len(events)}")
    first, last = events[0], events[-1]
    head = (*first[:Field.PID], last[Field.PID], last[Field.SPORT], last[Field.DPORT],
            *first[Field.SERVICE_PORT:Field.FLAGS], last[Field.FLAGS], last[Field.COMM])
    later = events[1:]
    codes = bytes(ev[Field.KIND] << 4 | ev[Field.NEW] for ev in later).ljust(MORE, b"\0")
    stamps = [ev[Field.TS] for ev in later] + [0] * (MORE - len(later))
    return _RECORD.pack(*head, len(later), codes, *stamps)


def unpack(data: bytes) -> Record:
    return _RECORD.unpack(data)


def unpack_from(data: bytes, offset: int) -> Record:
    return _RECORD.unpack_from(data, offset)


def format_addr(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_addr(text: str) -> tuple[int, bytes]:
    """``(family, 16 raw bytes)``; an IPv4-mapped IPv6 address becomes IPv4, as in the kernel program."""
    try:
        raw = socket.inet_pton(socket.AF_INET, text)
        return AF_INET, raw + bytes(12)
    except OSError:
        pass
    try:
        raw = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if raw[:12] == bytes(10) + b"\xff\xff":
        return AF_INET, raw[12:] + bytes(12)
    return AF_INET6, raw


def family_name(family: int) -> str:
    """How the API, the timeline and `watch --json` name an address family."""
    return "ipv4" if family == AF_INET else "ipv6"


def comm_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def comm_raw(text: str) -> bytes:
    """A command name as the kernel holds it: TASK_COMM_LEN (16) bytes, NUL-padded."""
    return text.encode()[:15].ljust(16, b"\0")


def to_json(ev: Event) -> dict[str, Any]:
    """The text form of one event, as ``watch --json`` prints it and replay reads it."""
    ts, sk, saddr, daddr, pid, sport, dport, svc, fam, kind, old, new, role, flags, comm = ev
    return {
        "ts_ns": ts,
        "sk": f"{sk:#x}",
        "kind": _KIND_NAMES.get(kind, str(kind)),
        "family": family_name(fam),
        "saddr": format_addr(fam, saddr),
        "sport": sport,
        "daddr": format_addr(fam, daddr),
        "dport": dport,
        "service_port": svc,
        "role": ROLE_NAMES.get(role, str(role)),
        "oldstate": TcpState(old).name if old else None,
        "newstate": TcpState(new).name if new else None,
        "flags": flags,
        "pid": pid,
        "comm": comm_text(comm),
    }


def from_json(obj: Any) -> Event:
    """Inverse of to_json; ValueError names the first field that is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("an event must be a JSON object")

    def need(name: str, kind: type) -> Any:
        if name not in obj:
            raise ValueError(f"missing field {name!r}")
        value = obj[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"field {name!r} must be {kind.__name__}, got {value!r}")
        return value

    def port(name: str) -> int:
        value = need(name, int)
        if not 0 <= value <= 65535:
            raise ValueError(f"field {name!r} is not a port: {value}")
        return value

    def state(name: str) -> int:
        value = obj.get(name)
        if value is None:
            return 0
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a TCP state name, got {value!r}")
        try:
            return TcpState.parse(value).value
        except ValueError as exc:
            raise ValueError(f"field {name!r}: {exc}") from None

    ts = need("ts_ns", int)
    if ts < 0:
        raise ValueError("field 'ts_ns' must not be negative")
    sk_text = need("sk", str)
    try:
        sk = int(sk_text, 16)
    except ValueError:
        sk = -1
    if not 0 <= sk < 1 << 64:
        raise ValueError(f"field 'sk' must be a 64-bit hex socket id, got {sk_text!r}")
    kind_name = need("kind", str)
    if kind_name not in _KINDS_BY_NAME:
        raise ValueError(f"field 'kind' must be one of {sorted(_KINDS_BY_NAME)}, got {kind_name!r}")
    role_name = obj.get("role", "unknown")
    if role_name not in _ROLES_BY_NAME:
        raise ValueError(f"field 'role' must be one of {sorted(_ROLES_BY_NAME)}, got {role_name!r}")
    def addr(name: str) -> tuple[int, bytes]:
        try:
            return parse_addr(need(name, str))
        except ValueError as exc:
            raise ValueError(f"field {name!r}: {exc}") from None

    fam, saddr = addr("saddr")
    fam_d, daddr = addr("daddr")
    if fam != fam_d:
        raise ValueError("saddr and daddr are of different address families")
    comm = obj.get("comm", "")
    if not isinstance(comm, str):
        raise ValueError("field 'comm' must be a string")
    pid = obj.get("pid", 0)
    flags = obj.get("flags", 0)
    if not isinstance(pid, int) or not isinstance(flags, int) or pid < 0 or not 0 <= flags < 256:
        raise ValueError("fields 'pid' and 'flags' must be small non-negative integers")
    return (
        ts,
        sk,
        saddr,
        daddr,
        pid,
        port("sport"),
        port("dport"),
        port("service_port"),
        fam,
        _KINDS_BY_NAME[kind_name],
        state("oldstate"),
        state("newstate"),
        _ROLES_BY_NAME[role_name],
        flags,
        comm_raw(comm),
    )


def role_name(role: int) -> str:
    return ROLE_NAMES.get(role, Role.UNKNOWN.name.lower())
