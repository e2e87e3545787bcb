"""The live source: bpf/tcpstates.bpf.c loaded with BCC, read through its ring buffer.

This is the only module that imports bcc, and it does so when a source is made, so
``--help``, ``replay`` and the unit tests work on a machine without it.
"""

from __future__ import annotations

import ctypes as ct
import logging
from dataclasses import dataclass
from pathlib import Path

from tracer.core import record
from tracer.core.record import Event
from tracer.sources import CountKey
from tracer.sources.ringbuf import RingBufferReader

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
PROGRAM = BPF_DIR / "tcpstates.bpf.c"

# bpf/tcpstates.h TCPSTATE_STAT_*
STAT_EVENTS, STAT_RINGBUF_FULL, STAT_COUNTS_FULL, STAT_SOCKS_FULL = range(4)

# struct bpf_prog_info (include/uapi/linux/bpf.h): where recursion_misses sits, and
# the size asked for; tests/unit/test_bcc_layout.py checks both against the header.
PROG_INFO_SIZE = 232
PROG_INFO_RECURSION_MISSES = 208
_SYS_BPF = 321  # x86_64
_BPF_OBJ_GET_INFO_BY_FD = 15


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


def program_misses(fd: int) -> int:
    """How often the kernel skipped this program: a tracepoint that fires while a BPF
    tracing program already runs on that CPU (an interrupt arriving during it) does
    not run it, and that transition is seen nowhere (kernel/trace/bpf_trace.c)."""
    libc = ct.CDLL(None, use_errno=True)
    info = ct.create_string_buffer(PROG_INFO_SIZE)
    attr = _InfoAttr(fd, PROG_INFO_SIZE, ct.addressof(info))
    if libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, ct.byref(attr), ct.sizeof(attr)) != 0:
        raise OSError(ct.get_errno(), "BPF_OBJ_GET_INFO_BY_FD failed")
    return int.from_bytes(info.raw[PROG_INFO_RECURSION_MISSES:PROG_INFO_RECURSION_MISSES + 8], "little")


class SourceError(RuntimeError):
    pass


# The compiler BCC runs once, at load. Its code pages stay mapped and resident
# afterwards: about 85 MB of the daemon's RSS here, never used again.
COMPILER_LIBRARIES = ("libLLVM", "libclang")
_MADV_DONTNEED = 4


def release_compiler_pages(smaps: str = "/proc/self/smaps") -> int:
    """Drops the compiler's code pages from this process's resident set and returns the
    bytes released. Only mappings that hold nothing but the file's own pages are
    touched (not writable, no anonymous pages): those come back from the file on a
    page fault if the compiler ever runs again. Relocated read-only data (RELRO) is
    anonymous, and writable mappings are the process's own: both stay."""
    libc = ct.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int)
    released = 0
    candidates: list[tuple[int, int, int]] = []  # (lo, hi, resident kB)
    current: list | None = None
    with open(smaps) as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                current = None
                if len(head) == 6 and "w" not in head[1] and any(lib in head[5] for lib in COMPILER_LIBRARIES):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    current = [lo, hi, 0]
                    candidates.append(current)
            elif current is not None and head[0] == "Rss:":
                current[2] = int(head[1])
            elif current is not None and head[0] == "Anonymous:" and int(head[1]):
                candidates.remove(current)
                current = None
    for lo, hi, rss_kb in candidates:
        if libc.madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            released += rss_kb * 1024
    return released


@dataclass(frozen=True)
class KernelStats:
    events: int  # records submitted to the ring buffer
    ringbuf_full: int  # records lost: ring buffer full
    counts_full: int  # transitions counted without their port: counter map full
    socks_full: int  # sockets whose role/owner could not be remembered
    counters: int  # entries in the counter map now (the socket map is too large to count at scrape)
    counters_capacity: int
    socks_capacity: int


class BccSource:
    def __init__(self, ringbuf_pages: int = 16384, max_socks: int = 524288, max_counts: int = 16384) -> None:
        try:
            import bcc  # noqa: PLC0415 (deliberately lazy)
        except ImportError:
            raise SourceError("the bcc Python module is missing: install Debian's python3-bpfcc "
                              "and use a Python that sees it (run `make setup`)") from None
        if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
            raise SourceError(f"ring buffer pages must be a power of two, got {ringbuf_pages}")
        cflags = [
            f"-I{BPF_DIR}",
            f"-DTCPSTATE_RINGBUF_PAGES={ringbuf_pages}",
            f"-DTCPSTATE_MAX_SOCKS={max_socks}",
            f"-DTCPSTATE_MAX_COUNTS={max_counts}",
        ]
        self.bcc_version = str(getattr(bcc, "__version__", "unknown"))
        try:
            self._bpf = bcc.BPF(src_file=str(PROGRAM).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for compile and load errors
            raise SourceError(f"loading {PROGRAM.name} failed: {exc} (run `tcpstate-tracer check`)") from None
        try:
            events = self._bpf[b"events"]
            self._ring = RingBufferReader(events.map_fd, events.max_entries, record.FORMAT)
            self._ring_size = events.max_entries
        except (OSError, ValueError) as exc:
            self._bpf.cleanup()
            raise SourceError(f"mapping the events ring buffer failed: {exc}") from None
        log.debug("compiler pages released from the resident set: %d MB", release_compiler_pages() >> 20)
        self._counts = self._bpf[b"counts"]
        self._overflow = self._bpf[b"overflow_counts"]
        self._stats = self._bpf[b"stats"]
        self._socks = self._bpf[b"socks"]
        log.info("attached to sock:inet_sock_set_state, tcp:tcp_receive_reset, tcp:tcp_send_reset "
                 "(ring buffer %d MiB)", events.max_entries >> 20)

    # How long a batch may wait in the ring buffer: the program sends no wakeups.
    POLL_INTERVAL_S = 0.02

    def read(self, timeout_s: float) -> list[Event]:
        batch = self._ring.read()
        if not batch:
            self._ring.wait(min(timeout_s, self.POLL_INTERVAL_S))
            batch = self._ring.read()
        return batch

    def transition_counts(self) -> dict[CountKey, int]:
        counts: dict[CountKey, int] = {}
        for key, per_cpu in self._counts.items():
            counts[(key.port, key.kind, key.oldstate, key.newstate)] = sum(per_cpu)
        if self._stat(STAT_COUNTS_FULL):
            for i in range(len(self._overflow)):
                n = self._overflow.sum(ct.c_int(i)).value
                if n:
                    counts[(None, i >> 8, (i >> 4) & 15, i & 15)] = n
        return counts

    def lost(self) -> dict[str, int]:
        return {
            "ring_buffer_full": self._stat(STAT_RINGBUF_FULL),
            # Transitions and resets the kernel did not run the program for (program_misses).
            "program_not_run": sum(program_misses(fn.fd) for fn in self._bpf.funcs.values()),
        }

    def kernel_stats(self) -> KernelStats:
        return KernelStats(
            events=self._stat(STAT_EVENTS),
            ringbuf_full=self._stat(STAT_RINGBUF_FULL),
            counts_full=self._stat(STAT_COUNTS_FULL),
            socks_full=self._stat(STAT_SOCKS_FULL),
            counters=sum(1 for _ in self._counts.keys()),
            counters_capacity=self._counts.max_entries,
            socks_capacity=self._socks.max_entries,
        )

    def backlog(self) -> float:
        """The share of the ring buffer holding records not read yet (0 to 1)."""
        return self._ring.pending_bytes() / self._ring_size

    def decode_errors(self) -> int:
        return self._ring.discarded

    def seed_listeners(self, listeners: dict[int, tuple[int, str]]) -> None:
        """Tells the program about ports that were listened on before it attached, so the
        sockets on them are taken for the passive side: port -> (owner pid, comm)."""
        ports = self._bpf[b"ports"]
        for port, (pid, comm) in listeners.items():
            key = ports.Key(port)
            if key in ports:
                continue
            ports[key] = ports.Leaf(1, pid, comm.encode()[:15])

    def _stat(self, slot: int) -> int:
        return self._stats.sum(ct.c_int(slot)).value

    def close(self) -> None:
        self._ring.close()
        self._bpf.cleanup()
