"""The privileged helper of `--run-as`: a small process that keeps the capabilities
the kernel-table reads need, and nothing else, while the daemon runs with none.

Measured here (README, "Least privilege"): with no capabilities the daemon still
reads its ring buffer and maps and its own namespace's socket table, but entering
another network namespace needs CAP_SYS_ADMIN (setns), finding the namespaces held
by other processes and their sockets' owners needs CAP_SYS_PTRACE (/proc/PID/ns,
/proc/PID/fd), and listing another user's descriptors CAP_DAC_READ_SEARCH. The
helper keeps those three, as root, with every other capability dropped from its
bounding set, no_new_privs, and death when the daemon dies. It answers only the
calls named in CALLS, one at a time, over a pipe (pickled: both ends are this
package, started by the daemon itself).

A namespace the daemon pins (BindConflicts) is pinned in the helper: the path it
gets back, /proc/self/fd/N, is the helper's, and only the helper reads through it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from tracer.core.kernel_socket import KernelSocket
from tracer.sources import kernel_table, port_holders

CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 2, 19, 21
KEPT = (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN)
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_FRAME = struct.Struct("=I")


CALLS = {
    "dump": lambda states: kernel_table.dump(states),
    "owners": kernel_table.owners,
    "holders": port_holders.holders,
    "toward": port_holders.toward,
    "local_port_range": port_holders.local_port_range,
    "pin": kernel_table.pin_namespace,
    "unpin": os.close,
}


class HelperError(kernel_table.KernelTableError):
    pass


# -- the helper's side ------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def keep_only(kept: Iterable[int] = KEPT) -> None:
    """Drops every capability but ``kept`` from the bounding, permitted and effective
    sets of this process (it stays uid 0)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    kept = set(kept)
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        if cap not in kept and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"dropping capability {cap} from the bounding set")
    mask = sum(1 << cap for cap in kept)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = 0
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _read_frame(f) -> Any:
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (n,) = _FRAME.unpack(head)
    body = f.read(n)
    if len(body) < n:
        raise EOFError
    return pickle.loads(body)  # noqa: S301 (the daemon that started this process wrote it)


def _write_frame(f, value: Any) -> None:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_FRAME.pack(len(body)) + body)
    f.flush()


def main() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the daemon died before the line above
        return 1
    keep_only()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    _write_frame(answers, ("ready", os.getpid()))
    while True:
        try:
            name, args = _read_frame(requests)
        except EOFError:
            return 0
        try:
            _write_frame(answers, ("ok", CALLS[name](*args)))
        except Exception as exc:  # the daemon raises it as its own, with this message
            _write_frame(answers, ("error", f"{type(exc).__name__}: {exc}"))


# -- the daemon's side ------------------------------------------------------------


class PrivilegedReads:
    """The daemon's handle on the helper: each method one call, answered in turn.
    It serves the Reconciler as its KernelTable and BindConflicts as its readers."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "tracer.host.helper"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, close_fds=True)
        self._lock = threading.Lock()
        try:
            kind, self.pid = _read_frame(self._proc.stdout)
        except EOFError:
            raise HelperError(f"the privileged helper did not start (exit {self._proc.wait()})") from None
        assert kind == "ready"

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            try:
                _write_frame(self._proc.stdin, (name, args))
                kind, value = _read_frame(self._proc.stdout)
            except (EOFError, BrokenPipeError, OSError) as exc:
                raise HelperError(f"the privileged helper is gone ({exc or 'end of its pipe'}); "
                                  "other namespaces' sockets and owners are not read") from None
        if kind == "error":
            raise HelperError(f"privileged helper: {value}")
        return value

    def dump(self, states: Iterable[int]) -> tuple[list[KernelSocket], list[str]]:
        return self._call("dump", list(states))

    def owners(self) -> dict[int, tuple[int, str]]:
        return self._call("owners")

    def holders(self, port: int, netns: dict[int, str] | None):
        return self._call("holders", port, netns)

    def toward(self, daddr: bytes, family: int, dport: int, netns: dict[int, str] | None = None):
        return self._call("toward", daddr, family, dport, netns)

    def local_port_range(self, path: str) -> tuple[int, int] | None:
        return self._call("local_port_range", path)

    def pin(self, pid: int) -> tuple[int, int] | None:
        return self._call("pin", pid)

    def unpin(self, fd: int) -> None:
        self._call("unpin", fd)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":
    sys.exit(main())
