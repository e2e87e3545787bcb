"""The live source: bpf/tcpstates.bpf.c loaded with BCC, read through its ring buffer.

This is the only module that imports bcc, and it does so when a source is made, so
``--help``, ``replay`` and the unit tests work on a machine without it.
"""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import struct
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tracer.core import calls, record
from tracer.sources import CountKey
from tracer.sources.ringbuf import HEADER as RING_HEADER
from tracer.sources.ringbuf import RingBufferReader

log = logging.getLogger(__name__)

BPF_DIR = Path(str(resources.files("tracer.bpf")))  # bpf/ in a checkout, tracer/bpf/ installed
PROGRAM = BPF_DIR / "tcpstates.bpf.c"

# bpf/tcpstates.h TCPSTATE_STAT_*: the slots of the program's per-CPU `stats` array, in
# order (tests/unit/test_header_constants.py checks them against the header).
STAT_SLOTS = ("EVENTS", "RINGBUF_FULL", "COUNTS_FULL", "SOCKS_FULL", "LIVES_FULL", "LIVES_STALE", "CALLS_FULL")
(STAT_EVENTS, STAT_RINGBUF_FULL, STAT_COUNTS_FULL, STAT_SOCKS_FULL, STAT_LIVES_FULL,
 STAT_LIVES_STALE, STAT_CALLS_FULL) = range(len(STAT_SLOTS))

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
# afterwards, never used again (README "Performance" has what they weigh).
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
    lives_full: int  # young sockets not assembled (their transitions went one by one)
    lives_stale: int  # lives found open where a new socket was born: that socket's end was never seen
    counters: int  # entries in the counter map now (the socket map is too large to count at scrape)
    counters_capacity: int
    socks_capacity: int
    lives_capacity: int
    # Transitions user space took out of the map of young lives (open past YOUNG_NS)
    # rather than through the ring buffer: received = events + taken.
    taken: int = 0


class BccSource:
    # A life still open after this long is taken out of the kernel's map, so that the
    # daemon sees the socket; a check for such lives runs every SWEEP_NS.
    YOUNG_NS = 300_000_000
    SWEEP_NS = 100_000_000
    # Taken only once records reserved this much after its birth have been read: a
    # socket at the same address before it must not follow it into the tracker.
    ORDER_GUARD_NS = 100_000_000
    LIFE_BATCH = 1024  # entries read from the map per system call
    TAKE_MAX = 8192  # lives taken per sweep at most: a host opening 100,000 at once is taken in steps
    READ_MAX = 16384  # records decoded at a time: each is a tuple of 24 objects until applied

    def __init__(self, ringbuf_pages: int = 16384, max_socks: int = 524288, max_counts: int = 16384,
                 max_lives: int = 65536) -> None:
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
            f"-DTCPSTATE_MAX_LIVES={max_lives}",
        ]
        self.bcc_version = str(getattr(bcc, "__version__", "unknown"))
        try:
            self._bpf = bcc.BPF(src_file=str(PROGRAM).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for compile and load errors
            raise SourceError(f"loading {PROGRAM.name} failed: {exc} (run `tcpstate-tracer check`)") from None
        try:
            events = self._bpf[b"events"]
            self._ring = RingBufferReader(events.map_fd, events.max_entries, record.RECORD_FORMAT,
                                          max_batch=self.READ_MAX)
            self._ring_size = events.max_entries
            failed = self._bpf[b"calls"]
            self._calls = RingBufferReader(failed.map_fd, failed.max_entries, calls.CALL_FORMAT, max_batch=1024)
        except (OSError, ValueError) as exc:
            self._bpf.cleanup()
            raise SourceError(f"mapping the ring buffers failed: {exc}") from None
        log.debug("compiler pages released from the resident set: %d MB", release_compiler_pages() >> 20)
        self._counts = self._bpf[b"counts"]
        self._overflow = self._bpf[b"overflow_counts"]
        self._stats = self._bpf[b"stats"]
        self._socks = self._bpf[b"socks"]
        self._lives = self._bpf[b"lives"]
        self._lib = bcc.libbcc.lib
        self._keys = (ct.c_uint64 * self.LIFE_BATCH)()
        self._values = ct.create_string_buffer(record.RECORD_SIZE * self.LIFE_BATCH)
        self._taken = ct.create_string_buffer(record.RECORD_SIZE)
        self._unpack_all = struct.Struct(record.RECORD_FORMAT).iter_unpack
        self._next_sweep_ns = 0
        self._newest_read_ns = 0  # the latest first timestamp of a record read
        self.lives_taken = 0
        self.events_taken = 0  # their transitions
        self.socks_not_remembered = 0  # taken lives whose socket the program could not be told of
        log.info("attached to sock:inet_sock_set_state, tcp:tcp_receive_reset, tcp:tcp_send_reset, "
                 "syscalls:sys_{enter,exit}_{socket,bind}, syscalls:sys_enter_setsockopt "
                 "(ring buffer %d MiB)", events.max_entries >> 20)

    # How long a batch may wait in the ring buffer: the program sends no wakeups.
    # The reader takes what waits once it is a batch, or after the interval: the tracker
    # applies a batch with a fixed cost of its own (numpy's calls) on top of each
    # record's, so batches of a few thousand records cost the least a record.
    POLL_INTERVAL_S = 0.1
    BATCH_RECORDS = 4096

    def read_records(self, timeout_s: float) -> record.RecordBatch:
        """The kernel's records (tracer/core/record.py), oldest first, as the ring holds them."""
        if self._ring.pending_bytes() < self.BATCH_RECORDS * self._ring.stride:
            # A sleep, not the ring's poll: that returns at once while anything waits.
            time.sleep(min(timeout_s, self.POLL_INTERVAL_S))
        data = self._ring.read_bytes()
        batch = record.RecordBatch(data, RING_HEADER, self._ring.stride)
        if data:
            self._newest_read_ns = max(self._newest_read_ns, int(batch.array["ts_ns"][-1]))
        return batch

    def read_calls(self, timeout_s: float) -> list[calls.Call]:
        """The failed socket calls (bind() with EADDRINUSE), oldest first; waits up to
        ``timeout_s`` for one. The program wakes this wait for each."""
        if not self._calls.pending_bytes():
            self._calls.wait(timeout_s)
        data = self._calls.read_bytes()
        stride = self._calls.stride
        return [calls.decode(data, off + RING_HEADER) for off in range(0, len(data), stride)]

    def calls_lost(self) -> int:
        return self._stat(STAT_CALLS_FULL)

    def sweep(self) -> list[record.Record]:
        """Every SWEEP_NS, the lives open for longer than YOUNG_NS, taken from the map:
        to be applied after the records read so far."""
        now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
        if now < self._next_sweep_ns:
            return []
        self._next_sweep_ns = now + self.SWEEP_NS
        # With nothing waiting in the ring buffer, every record reserved before now has been read.
        newest = now if not self._ring.pending_bytes() else self._newest_read_ns
        return self.take_lives(min(now - self.YOUNG_NS, newest - self.ORDER_GUARD_NS))

    def take_lives(self, born_before_ns: int) -> list[record.Record]:
        """Takes the lives born before ``born_before_ns`` out of the kernel's map: from
        now on the program sends those sockets' transitions one by one. Each is taken
        with one lookup-and-delete, the program's own way of owning an entry, so a
        transition is either in the life taken or in a record of its own."""
        lib, fd = self._lib, self._lives.map_fd
        keys, values, size = self._keys, self._values, record.RECORD_SIZE
        token, count = ct.c_uint32(0), ct.c_uint32(0)
        old: list[int] = []
        first = True
        while True:
            count.value = self.LIFE_BATCH
            res = lib.bpf_lookup_batch(fd, None if first else ct.byref(token), ct.byref(token),
                                       keys, values, ct.byref(count))
            err = ct.get_errno()
            if res and err != errno.ENOENT:
                raise SourceError(f"reading the young-life map failed: {errno.errorcode.get(err, err)}")
            n = count.value
            if n:
                for i, rec in enumerate(self._unpack_all(values.raw[:n * size])):
                    if rec[0] < born_before_ns:
                        old.append(keys[i])
            if res or not n or len(old) >= self.TAKE_MAX:
                break
            first = False
        taken = []
        buf = self._taken
        for sk in old[:self.TAKE_MAX]:
            if lib.bpf_lookup_and_delete(fd, ct.byref(ct.c_uint64(sk)), buf) == 0:
                taken.append(record.unpack(buf.raw))
        self.lives_taken += len(taken)
        self.events_taken += sum(len(record.events_of(rec)) for rec in taken)
        if taken:
            self._remember(taken)
        return taken

    def _remember(self, lives: list[record.Record]) -> None:
        """Tells the program who the sockets of the lives taken are (role, service port,
        owner), as it keeps them itself for a socket without a life. A socket that
        closed since it was taken leaves an entry behind until a new socket is born
        at its address."""
        socks = self._socks
        n = len(lives)
        keys = (socks.Key * n)()
        values = (socks.Leaf * n)()
        for i, rec in enumerate(lives):
            keys[i] = rec[1]
            v = values[i]
            v.pid, v.service_port, v.role, v.flags, v.comm = rec[4], rec[7], rec[12], rec[13], rec[14]
        count = ct.c_uint32(n)
        if self._lib.bpf_update_batch(socks.map_fd, keys, values, ct.byref(count)):
            err = ct.get_errno()
            log.debug("remembering %d taken sockets for the program failed after %d: %s",
                      n, count.value, errno.errorcode.get(err, err))
        self.socks_not_remembered += n - count.value

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
            socks_full=self._stat(STAT_SOCKS_FULL) + self.socks_not_remembered,
            lives_full=self._stat(STAT_LIVES_FULL),
            lives_stale=self._stat(STAT_LIVES_STALE),
            counters=sum(1 for _ in self._counts.keys()),
            counters_capacity=self._counts.max_entries,
            socks_capacity=self._socks.max_entries,
            lives_capacity=self._lives.max_entries,
            taken=self.events_taken,
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
        self._calls.close()
        self._bpf.cleanup()
