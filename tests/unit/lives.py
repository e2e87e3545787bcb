"""Socket lives for the store's and the API's tests, in the shape the tracker hands them over.

``life`` builds a lifecycle.RawLife from what a test means (text addresses, state
names, Unix seconds) and gives it monotonic nanoseconds, so that the tests write
through the one path the daemon uses: ``store.write(lives, OFFSET_NS)``. Times are
whole microseconds, made with integers (a float of Unix nanoseconds is not exact),
so what the store gives back is exactly ``read(life)``.
"""

from __future__ import annotations

import socket

from tracer.core.lifecycle import Lifecycle, RawLife, from_raw
from tracer.core.record import AF_INET, AF_INET6
from tracer.core.states import Role, TcpState

# Unix minus monotonic nanoseconds (Clock.offset_ns), with a part below the
# microsecond, so that a store adding it in the wrong place is off by one.
OFFSET_NS = 1_600_000_000_123_456_789
CLIENT_CLOSE = (("SYN_SENT", 0.0003), ("ESTABLISHED", 1.5), ("FIN_WAIT1", 0.0002), ("FIN_WAIT2", 0.0001),
                ("TIME_WAIT", 60.0))
SERVER_CLOSE = (("SYN_RECV", 0.0001), ("ESTABLISHED", 1.5), ("CLOSE_WAIT", 0.0003), ("LAST_ACK", 0.0002))
_ROLES = {r.name.lower(): r.value for r in Role}


def raw_addr(text: str, family: int) -> bytes:
    """16 bytes as the kernel's record has them (IPv4 in the first 4)."""
    if family == AF_INET:
        return socket.inet_pton(socket.AF_INET, text) + bytes(12)
    return socket.inet_pton(socket.AF_INET6, text)


def life(id: int, start: float = 1000.0, states=CLIENT_CLOSE, *, open: bool = False, laddr: str = "127.0.0.1",
         lport: int = 40000, raddr: str = "127.0.0.1", rport: int = 8080, port: int | None = None,
         role: str = "active", netns: int | None = None, family: str | None = None, pid: int | None = 4242,
         comm: str | None = "curl", how: int = 0, marks: tuple[int, ...] = ()) -> RawLife:
    """A socket's life from (state, seconds in it) pairs, starting at Unix time ``start``;
    an open one is still in its last state. ``family`` defaults to the addresses'
    (``"ipv6"`` keeps an IPv4-mapped address as the kernel reports it on an IPv6 socket)."""
    fam = AF_INET6 if (family or ("ipv6" if ":" in laddr else "ipv4")) == "ipv6" else AF_INET
    us = round(start * 1e6)
    history: list[int] = []
    for state, seconds in states:
        history += (TcpState[state].value, us * 1000 - OFFSET_NS)
        us += round(seconds * 1e6)
    return RawLife(id=id, netns=netns or 0, family=fam, saddr=raw_addr(laddr, fam), sport=lport,
                   daddr=raw_addr(raddr, fam), dport=rport, role=_ROLES[role],
                   service_port=rport if port is None else port, pid=pid or 0,
                   comm=(comm or "").encode().ljust(16, b"\0"), history=tuple(history),
                   end_ns=None if open else us * 1000 - OFFSET_NS, how=how, marks=marks)


def read(raw: RawLife) -> Lifecycle:
    """The Lifecycle the store gives back for ``raw`` written with OFFSET_NS."""
    return from_raw(raw, lambda ns: (ns + OFFSET_NS) / 1e9)
