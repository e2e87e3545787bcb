"""The few kernel settings the daemon reads (from /proc/sys, the daemon's namespace)."""

from __future__ import annotations

from pathlib import Path

PROC_SYS = Path("/proc/sys")


def max_tw_buckets(proc_sys: Path = PROC_SYS) -> int | None:
    """net.ipv4.tcp_max_tw_buckets: past it the kernel refuses new TIME_WAIT sockets."""
    try:
        return int((proc_sys / "net/ipv4/tcp_max_tw_buckets").read_text())
    except (OSError, ValueError):
        return None


def ephemeral_ports(proc_sys: Path = PROC_SYS) -> range:
    """net.ipv4.ip_local_port_range: the ports connect() picks from (Linux's default when unreadable)."""
    try:
        low, high = (int(n) for n in (proc_sys / "net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)
