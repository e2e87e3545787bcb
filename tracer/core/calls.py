"""The socket-call record, mirrored once from bpf/tcpstates.h (struct tcpstate_call).

The program sends one when a TCP socket's bind() fails with EADDRINUSE; it carries
the process, the address asked for and the SO_REUSEADDR / SO_REUSEPORT its owner
set, as far as the program saw them (bpf/tcpstates.bpf.c). tests/unit/test_record.py
compiles the header and checks this layout against it, as it does the event record.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

# (name, struct code) in C order.
CALL_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"),
    ("pid", "I"),
    ("tid", "I"),
    ("ret", "i"),
    ("fd", "i"),
    ("addr", "16s"),
    ("port", "H"),
    ("family", "B"),
    ("call", "B"),
    ("opts", "B"),
    ("pad", "3s"),
    ("comm", "16s"),
)
CALL_FORMAT = "<" + "".join(code for _, code in CALL_FIELDS)
CALL_SIZE = struct.calcsize(CALL_FORMAT)
CALL_NAMES = tuple(name for name, _ in CALL_FIELDS)
_CALL = struct.Struct(CALL_FORMAT)

# TCPSTATE_CALL_*
CALL_BIND = 1
CALL_NAMES_BY_CODE = {CALL_BIND: "bind"}
# TCPSTATE_OPT_*
OPT_TCP = 0x01
OPT_REUSEADDR = 0x02
OPT_REUSEPORT = 0x04

_V4MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True)
class Call:
    """One failed call, decoded."""

    ts_ns: int  # CLOCK_MONOTONIC, as the event records
    pid: int
    tid: int
    errno: int  # positive: 98 is EADDRINUSE
    fd: int
    family: int  # socket.AF_INET or AF_INET6, of the address asked for
    addr: str  # the address asked for, "0.0.0.0" / "::" for any
    port: int
    call: str  # "bind"
    reuseaddr: bool
    reuseport: bool
    comm: str

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.addr).is_unspecified


def decode(data: bytes, offset: int = 0) -> Call:
    (ts, pid, tid, ret, fd, addr, port, family, call, opts, _pad, comm) = _CALL.unpack_from(data, offset)
    if family == socket.AF_INET:
        text = socket.inet_ntop(socket.AF_INET, addr[:4])
    elif addr[:12] == _V4MAPPED:
        text = socket.inet_ntop(socket.AF_INET, addr[12:])
    else:
        text = socket.inet_ntop(socket.AF_INET6, addr)
    return Call(ts, pid, tid, -ret, fd, family, text, port, CALL_NAMES_BY_CODE.get(call, str(call)),
                bool(opts & OPT_REUSEADDR), bool(opts & OPT_REUSEPORT),
                comm.split(b"\0", 1)[0].decode("utf-8", "replace"))


def pack(c: Call) -> bytes:
    """The kernel's bytes for ``c``: for tests."""
    if c.family == socket.AF_INET:
        addr = socket.inet_pton(socket.AF_INET, c.addr) + bytes(12)
    else:
        addr = socket.inet_pton(socket.AF_INET6, c.addr)
    code = {v: k for k, v in CALL_NAMES_BY_CODE.items()}[c.call]
    opts = OPT_TCP | (OPT_REUSEADDR if c.reuseaddr else 0) | (OPT_REUSEPORT if c.reuseport else 0)
    return _CALL.pack(c.ts_ns, c.pid, c.tid, -c.errno, c.fd, addr, c.port, c.family, code, opts, bytes(3),
                      c.comm.encode()[:16])
