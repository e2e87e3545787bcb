"""A consumer of a BPF ring buffer of fixed-size records, read in bulk through mmap.

libbcc calls back into Python once per record (ctypes), which costs more than the
rest of the per-event work together. The ring buffer's memory is mappable, so this
reader follows libbpf's consumer (tools/lib/bpf/ringbuf.c) but decodes a whole
stretch of records with one ``struct.iter_unpack``: every record here has the same
size, so records sit at a fixed stride.

Layout (kernel/bpf/ringbuf.c): page 0 is the consumer position (read-write); page 1
the producer position; the data pages follow. The kernel maps them twice in a row
so that a record wrapping around the end reads as one stretch, and libbpf maps both
copies. This reader maps them once and joins a wrapped stretch itself: every mapped
page of a ring buffer is resident, so a second copy would add the whole ring's size
to the daemon's RSS. Each record starts with an 8-byte header whose first word is
its length with BUSY (bit 31, not committed yet) and DISCARD (bit 30) flags.
"""

from __future__ import annotations

import mmap
import select
import struct

_DISCARD = 1 << 30
HEADER = 8  # each record's: its length and the BUSY and DISCARD bits
_POS = struct.Struct("<Q")


class RecordMismatch(RuntimeError):
    """The ring buffer holds records this reader was not built for."""


class RingBufferReader:
    def __init__(self, map_fd: int, data_size: int, record_format: str, max_batch: int = 65536) -> None:
        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"ring buffer size must be a power of two, got {data_size}")
        record_size = struct.calcsize(record_format)
        self.stride = (HEADER + record_size + 7) & ~7
        # The header is skipped by pad bytes, so iter_unpack yields bare records.
        self._unpack = struct.Struct("<%dx%s%dx" % (HEADER, record_format.lstrip("<=@!>"),
                                                     self.stride - HEADER - record_size)).iter_unpack
        self._record_size = record_size
        self._mask = data_size - 1
        self._size = data_size
        self._max_batch = max_batch
        page = mmap.PAGESIZE
        self._page = page
        self._consumer = mmap.mmap(map_fd, page, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(map_fd, page + data_size, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ, offset=page)
        self._fd = map_fd
        self.discarded = 0  # records skipped (the program never discards; counted if it ever did)
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)

    def wait(self, timeout_s: float) -> None:
        """Returns at once when records are waiting, when the program wakes the ring,
        else after the timeout. The events are submitted without wakeups
        (bpf/tcpstates.bpf.c says why): for them the timeout is the reader's polling
        interval."""
        self._poll.poll(max(0, int(timeout_s * 1000)))

    def _bytes(self, lo: int, hi: int, step: int = 1) -> bytes:
        """Every ``step``-th byte of the data between ring positions ``lo`` and ``hi``,
        joined across the end of the data pages."""
        mm, page = self._producer, self._page
        a = lo & self._mask
        b = a + hi - lo
        if b <= self._size:
            return mm[page + a:page + b:step]
        first = mm[page + a:page + self._size:step]
        resume = a + len(first) * step - self._size  # where the stride lands after the end
        return first + mm[page + resume:page + b - self._size:step]

    def read(self) -> list[tuple]:
        """All committed records, oldest first (at most max_batch)."""
        data = self.read_bytes()
        return list(self._unpack(data)) if data else []

    def read_bytes(self) -> bytes:
        """The committed records as the ring holds them (each behind its 8-byte header,
        at ``stride``), oldest first (at most max_batch); b"" when none is waiting."""
        cons = _POS.unpack_from(self._consumer, 0)[0]
        prod = _POS.unpack_from(self._producer, 0)[0]
        stride = self.stride
        n = min((prod - cons) // stride, self._max_batch)
        if n <= 0:
            return b""
        end = cons + n * stride
        # Byte 3 of each header holds the BUSY and DISCARD bits; it is 0 for a
        # committed record. Stop before the first record still being written.
        flags = self._bytes(cons + 3, end, stride)
        committed = len(flags) - len(flags.lstrip(b"\0"))
        if not committed and flags[0] == _DISCARD >> 24:
            # Never produced by our program, but a discarded record must not
            # block the ring: step over it.
            self._consumer[0:8] = _POS.pack(cons + stride)
            self.discarded += 1
            return self.read_bytes()
        if committed:
            end = cons + committed * stride
            # Read the records only after their headers said committed: the kernel
            # writes a record before it clears BUSY.
            # The length is the header's low three bytes (the fourth holds the flags).
            if any(self._bytes(cons + i, end, stride).count((self._record_size >> 8 * i) & 0xFF) != committed
                   for i in range(3)):
                raise RecordMismatch(
                    f"ring buffer record length differs from the {self._record_size} bytes "
                    "this daemon decodes: the BPF program and tracer/core/record.py disagree")
            data = self._bytes(cons, end)
            self._consumer[0:8] = _POS.pack(cons + committed * stride)
            return data
        return b""

    def pending_bytes(self) -> int:
        cons = _POS.unpack_from(self._consumer, 0)[0]
        prod = _POS.unpack_from(self._producer, 0)[0]
        return prod - cons

    def close(self) -> None:
        self._poll.unregister(self._fd)
        self._consumer.close()
        self._producer.close()
