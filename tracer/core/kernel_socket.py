"""A TCP socket as the kernel's socket table (sock_diag) shows it, in the core's terms.

One record for both sides: tracer/sources/kernel_table.py decodes the kernel's
answers into it, and the tracker reconciles its model against it. Addresses are
16 raw bytes as ``record.parse_addr`` gives them (IPv4 in the first 4).
"""

from __future__ import annotations

from dataclasses import dataclass

# A connection as the kernel's socket table keys it: (local address, local port,
# remote address, remote port); addresses are the record's 16 raw bytes.
Conn = tuple[bytes, int, bytes, int]


@dataclass(frozen=True, slots=True)
class KernelSocket:
    netns: int  # the namespace's inode number (readlink /proc/PID/ns/net -> net:[N])
    family: int  # AF_INET for IPv4-mapped IPv6 too
    saddr: bytes
    sport: int
    daddr: bytes
    dport: int
    state: int  # TcpState; TIME_WAIT for every timewait socket, whatever its substate
    expires_ns: int = 0  # time left on its timer (TIME_WAIT: time left in TIME_WAIT)
    inode: int = 0  # 0 for TIME_WAIT and orphans
    cookie: int = 0  # the kernel's socket cookie
    pid: int = 0  # owner, when looked up in /proc (kernel_table.owners)
    comm: str = ""

    @property
    def conn(self) -> Conn:
        return (self.saddr, self.sport, self.daddr, self.dport)
