"""The kernel's own socket table, read over sock_diag netlink (pyroute2).

The tracepoint shows full sockets only; the timewait mini-sockets that follow an
active close live in this table. Only the states asked for are dumped, so a host
with many established connections pays for its TIME_WAIT sockets alone.
"""

from __future__ import annotations

import socket

from tracer.core.record import parse_addr
from tracer.core.states import TcpState
from tracer.core.tracker import Conn


class KernelTableError(RuntimeError):
    pass


def timewait_connections() -> dict[Conn, int]:
    """Every TIME_WAIT connection of this network namespace -> nanoseconds its timer has left."""
    try:
        from pyroute2 import DiagSocket
    except ImportError:
        raise KernelTableError("the pyroute2 module is missing: run `make setup`") from None
    found: dict[Conn, int] = {}
    try:
        with DiagSocket() as diag:
            diag.bind()
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in diag.get_sock_stats(family=family, states=1 << TcpState.TIME_WAIT):
                    _, saddr = parse_addr(msg["idiag_src"])
                    _, daddr = parse_addr(msg["idiag_dst"])
                    conn = (saddr, msg["idiag_sport"], daddr, msg["idiag_dport"])
                    found[conn] = msg["idiag_expires"] * 1_000_000
    except OSError as exc:
        raise KernelTableError(f"reading the kernel's socket table (sock_diag) failed: {exc}") from None
    return found
