"""Who holds a TCP port, read from the kernel now: its sockets on that local port in
each network namespace (sock_diag, filtered in the kernel), the owners of those that
are full sockets (/proc/*/fd), and what a bind() of the port would get, tried for real.

A bind() fails with EADDRINUSE only because of sockets in its own namespace, so the
holders are grouped by namespace. The trial bind is the kernel's own answer, not a
model of its rules: a socket is made in the namespace, bound (never listened on) and
closed at once. For those microseconds it holds the port, so a server binding it at
that very moment would be refused; the trial is made only when asked for.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from tracer.core.conflicts import Holders, ListenerHolder
from tracer.core.kernel_socket import KernelSocket
from tracer.core.record import format_addr
from tracer.core.states import TcpState
from tracer.sources import kernel_table

# Every state a socket on a local port can hold it in (not CLOSE: such a socket holds
# no port that the table shows; not NEW_SYN_RECV: a request, not a socket).
HOLDING_STATES = sorted(s.value for s in TcpState if s not in (TcpState.CLOSE, TcpState.NEW_SYN_RECV))


def _group(port: int, sockets: list[KernelSocket],
           owners: Callable[[], dict[int, tuple[int, str]]]) -> dict[int, Holders]:
    listeners: dict[int, list[ListenerHolder]] = {}
    time_wait: dict[int, int] = {}
    left: dict[int, float] = {}
    others: dict[int, dict[str, int]] = {}
    owner_of: dict[int, tuple[int, str]] | None = None
    for s in sockets:
        if s.sport != port:
            continue
        ns = s.netns
        if s.state == TcpState.TIME_WAIT:
            time_wait[ns] = time_wait.get(ns, 0) + 1
            left[ns] = max(left.get(ns, 0.0), s.expires_ns / 1e9)
        elif s.state == TcpState.LISTEN:
            if owner_of is None:
                owner_of = owners()
            pid, comm = owner_of.get(s.inode, (0, ""))
            listeners.setdefault(ns, []).append(ListenerHolder(format_addr(s.family, s.saddr), pid, comm))
        else:
            counts = others.setdefault(ns, {})
            name = TcpState(s.state).name
            counts[name] = counts.get(name, 0) + 1
    return {ns: Holders(tuple(listeners.get(ns, ())), time_wait.get(ns, 0), left.get(ns, 0.0), others.get(ns, {}))
            for ns in set(listeners) | set(time_wait) | set(others)}


def holders(port: int, netns: dict[int, str] | None = None,
            owners: Callable[[], dict[int, tuple[int, str]]] = kernel_table.owners,
            ) -> tuple[dict[int, Holders], list[str]]:
    """The sockets on local port ``port`` in every namespace of ``netns`` (inode -> path;
    None: every namespace), grouped by namespace; the namespaces where nothing holds it
    are left out. Returns (holders, problems), as ``kernel_table.dump``."""
    paths = kernel_table.namespaces() if netns is None else dict(netns)
    sockets, problems = kernel_table.dump(HOLDING_STATES, paths, sport=port)
    return _group(port, sockets, owners), problems


def _in_namespace(path: str, fn: Callable[[], object]) -> object:
    """Runs ``fn`` in a thread of its own moved into the namespace at ``path``: the
    caller's thread never changes namespace, and the moved thread simply ends."""
    result: list[object] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            if os.stat(path).st_ino != os.stat("/proc/thread-self/ns/net").st_ino:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    kernel_table._setns(fd)
                finally:
                    os.close(fd)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=work, name="port-trial", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def _try_bind(family: int, port: int, reuseaddr: bool) -> str:
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))  # e.g. no IPv6 in this namespace
    try:
        if reuseaddr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as a dual-stack server binds
        s.bind(("0.0.0.0", port) if family == socket.AF_INET else ("::", port))
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()


def trial_bind(port: int, path: str) -> dict[tuple[str, bool], str]:
    """What bind() of the wildcard address to ``port`` gets in the namespace at ``path``,
    without and with SO_REUSEADDR, for IPv4 and for dual-stack IPv6."""

    def tries() -> dict[tuple[str, bool], str]:
        return {(name, reuse): _try_bind(family, port, reuse)
                for name, family in (("ipv4", socket.AF_INET), ("ipv6", socket.AF_INET6))
                for reuse in (False, True)}

    return _in_namespace(path, tries)  # type: ignore[return-value]


_V4_MAPPED = bytes(10) + b"\xff\xff"


def toward(daddr: bytes, family: int, dport: int, netns: dict[int, str] | None = None,
           ) -> tuple[dict[int, tuple[dict[str, int], float]], list[str]]:
    """The sockets toward ``daddr``:``dport`` (the record's raw address and family) in
    every namespace of ``netns`` (None: every namespace): by namespace, (sockets by
    state name, seconds until the first of its TIME_WAITs expires). Returns (that,
    problems), as ``kernel_table.dump``."""
    if family == socket.AF_INET6 and daddr[:12] == _V4_MAPPED:
        daddr = daddr[12:16] + bytes(12)  # the table gives a mapped address as IPv4
    paths = kernel_table.namespaces() if netns is None else dict(netns)
    sockets, problems = kernel_table.dump(HOLDING_STATES, paths, dport=dport)
    found: dict[int, tuple[dict[str, int], float]] = {}
    for s in sockets:
        if s.dport != dport or s.daddr != daddr:
            continue
        counts, first = found.get(s.netns, ({}, 0.0))
        name = TcpState(s.state).name
        counts[name] = counts.get(name, 0) + 1
        if s.state == TcpState.TIME_WAIT:
            left = s.expires_ns / 1e9
            first = left if not first else min(first, left)
        found[s.netns] = (counts, first)
    return found, problems


def local_port_range(path: str) -> tuple[int, int] | None:
    """net.ipv4.ip_local_port_range in the namespace at ``path`` (a network sysctl reads
    as the opening thread's namespace has it), or None when it cannot be read."""

    def read() -> tuple[int, int]:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)

    try:
        return _in_namespace(path, read)  # type: ignore[return-value]
    except (OSError, ValueError):
        return None
