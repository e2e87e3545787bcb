"""tracefs: where tracepoints are found (and mounted, when a fresh machine lacks it)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MOUNT_POINT = Path("/sys/kernel/tracing")
LEGACY = Path("/sys/kernel/debug/tracing")
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_receive_reset", "tcp/tcp_send_reset",
               "tcp/tcp_retransmit_skb", "tcp/tcp_retransmit_synack",
               "syscalls/sys_enter_socket", "syscalls/sys_exit_socket", "syscalls/sys_enter_setsockopt",
               "syscalls/sys_enter_bind", "syscalls/sys_exit_bind",
               "syscalls/sys_enter_shutdown", "syscalls/sys_exit_shutdown")


class TracefsError(RuntimeError):
    pass


def find(root: Path | None = None) -> Path | None:
    for path in ([root] if root else [MOUNT_POINT, LEGACY]):
        try:
            if (path / "events").is_dir():
                return path
        except PermissionError:
            raise TracefsError(f"cannot read {path}: permission denied (run as root)") from None
    return None


def mount(target: Path = MOUNT_POINT) -> Path:
    """Mounts tracefs at /sys/kernel/tracing, as `mount -t tracefs nodev ...` does."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TracefsError(f"mounting tracefs at {target} failed: {os.strerror(err)} "
                           "(run as root, or mount it: mount -t tracefs nodev /sys/kernel/tracing)")
    log.info("tracefs was not mounted: mounted it at %s", target)
    return target


def ensure() -> Path:
    return find() or mount()


def missing_tracepoints(root: Path) -> list[str]:
    return [tp for tp in TRACEPOINTS if not (root / "events" / tp / "format").exists()]
