"""RingBufferReader against a memfd laid out like the kernel's BPF ring buffer.

The kernel maps the data pages twice in a row (kernel/bpf/ringbuf.c) so that a
record wrapping around the end reads as one stretch; the reader maps them once
(producer page + data_size) and joins a wrapped stretch itself, so the emulation
writes every data byte once, at its position modulo the data size.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

import pytest

from tracer.core import record
from tracer.core.states import Role, TcpState
from tracer.sources.ringbuf import RecordMismatch, RingBufferReader

PAGE = mmap.PAGESIZE
BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = struct.Struct("<II")  # len (with BUSY/DISCARD), pg_off
POS = struct.Struct("<Q")
STRIDE = (HEADER.size + record.SIZE + 7) & ~7

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")


class FakeRing:
    """The producer side: the file the reader maps, written the way the kernel writes it."""

    def __init__(self, data_size: int) -> None:
        self.data_size = data_size
        self.fd = os.memfd_create("tcpstate-ringbuf-test")
        os.ftruncate(self.fd, 2 * PAGE + 2 * data_size)
        self.mm = mmap.mmap(self.fd, 2 * PAGE + 2 * data_size)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)

    @property
    def consumer(self) -> int:
        return POS.unpack_from(self.mm, 0)[0]

    @property
    def producer(self) -> int:
        return POS.unpack_from(self.mm, PAGE)[0]

    def start_at(self, pos: int) -> None:
        POS.pack_into(self.mm, 0, pos)
        POS.pack_into(self.mm, PAGE, pos)

    def _put(self, pos: int, data: bytes) -> None:
        mask = self.data_size - 1
        base = 2 * PAGE
        for i, b in enumerate(data):
            off = (pos + i) & mask
            self.mm[base + off] = b

    def reserve(self, payload: bytes, length: int | None = None, flags: int = BUSY) -> int:
        """Writes a record at the producer position with the given header flags; returns its position."""
        pos = self.producer
        length = len(payload) if length is None else length
        self._put(pos, HEADER.pack(length | flags, 0) + payload.ljust(STRIDE - HEADER.size, b"\0"))
        POS.pack_into(self.mm, PAGE, pos + STRIDE)
        return pos

    def set_flags(self, pos: int, flags: int) -> None:
        mask = self.data_size - 1
        length = HEADER.unpack_from(self.mm, 2 * PAGE + (pos & mask))[0] & ~(BUSY | DISCARD)
        self._put(pos, struct.pack("<I", length | flags))

    def commit(self, ev: tuple, **kwargs) -> int:
        kwargs.setdefault("flags", 0)
        return self.reserve(struct.pack(record.FORMAT, *ev), **kwargs)


@pytest.fixture
def ring():
    """Makes (FakeRing, RingBufferReader) pairs and closes them after the test."""
    made: list[tuple[FakeRing, RingBufferReader]] = []

    def make(data_size: int = 4096, **kwargs) -> tuple[FakeRing, RingBufferReader]:
        fake = FakeRing(data_size)
        reader = RingBufferReader(fake.fd, data_size, record.FORMAT, **kwargs)
        made.append((fake, reader))
        return fake, reader

    yield make
    for fake, reader in made:
        reader.close()
        fake.close()


def ev(event, i: int) -> tuple:
    return event(0xFFFF888000D39280 + i * 0x40, TcpState.SYN_SENT, TcpState.ESTABLISHED,
                 ts_ns=1_000_000 + i, sport=37000 + i, dport=20001, service_port=20001,
                 role=Role.ACTIVE, pid=2687, comm=b"python3")


def test_stride_is_header_plus_record_rounded_to_8(ring):
    _, reader = ring()
    assert reader.stride == STRIDE == 88


def test_empty_ring_reads_nothing(ring):
    fake, reader = ring()
    assert reader.read() == []
    assert (fake.consumer, reader.pending_bytes()) == (0, 0)


def test_committed_records_decode_in_order(ring, event):
    fake, reader = ring()
    events = [ev(event, i) for i in range(5)]
    for e in events:
        fake.commit(e)
    assert reader.pending_bytes() == 5 * STRIDE
    assert reader.read() == events
    assert fake.consumer == 5 * STRIDE
    assert reader.pending_bytes() == 0
    assert reader.read() == []


def test_busy_record_stops_the_batch_until_committed(ring, event):
    fake, reader = ring()
    events = [ev(event, i) for i in range(4)]
    fake.commit(events[0])
    busy = fake.commit(events[1], flags=BUSY)
    fake.commit(events[2])
    assert reader.read() == events[:1]
    assert fake.consumer == STRIDE
    assert reader.read() == []  # still being written
    assert fake.consumer == STRIDE
    fake.set_flags(busy, 0)
    fake.commit(events[3])
    assert reader.read() == events[1:]
    assert fake.consumer == 4 * STRIDE


def test_consumer_advances_by_whole_strides(ring, event):
    fake, reader = ring(max_batch=3)
    events = [ev(event, i) for i in range(7)]
    for e in events:
        fake.commit(e)
    got, positions = [], []
    while batch := reader.read():
        got.append(batch)
        positions.append(fake.consumer)
    assert [len(b) for b in got] == [3, 3, 1]
    assert positions == [3 * STRIDE, 6 * STRIDE, 7 * STRIDE]
    assert [e for b in got for e in b] == events


@pytest.mark.parametrize("before", [0, 1])  # records of the batch wholly before the end
@pytest.mark.parametrize("offset", range(0, STRIDE, 8))  # the kernel aligns records to 8
def test_records_wrapping_around_the_end_at_any_byte_decode(ring, event, before, offset):
    fake, reader = ring(data_size=4096)
    start = 4096 - (before + 1) * STRIDE + offset  # the end falls inside record `before`, `offset` from its end
    fake.start_at(start)
    events = [ev(event, i) for i in range(5)]
    for e in events:
        fake.commit(e)
    assert reader.read() == events
    assert fake.consumer == start + 5 * STRIDE


def test_positions_keep_growing_past_many_laps(ring, event):
    fake, reader = ring(data_size=4096)
    events = [ev(event, i % 50) for i in range(200)]  # about four laps of the data area
    got = []
    for e in events:
        fake.commit(e)
        got += reader.read()
    assert got == events
    assert fake.consumer == fake.producer == 200 * STRIDE


def test_discarded_records_are_stepped_over(ring, event):
    fake, reader = ring()
    events = [ev(event, i) for i in range(3)]
    fake.commit(events[0], flags=DISCARD)
    fake.commit(events[1])
    fake.commit(events[2], flags=DISCARD)
    assert reader.read() == events[1:2]
    assert reader.read() == []
    assert fake.consumer == 3 * STRIDE


@pytest.mark.parametrize("length", [
    record.SIZE - 8,
    record.SIZE - 1,
    record.SIZE + 8,
    record.SIZE + 256,
    record.SIZE + 65536,
])
def test_wrong_record_length_raises(ring, event, length):
    fake, reader = ring()
    fake.commit(ev(event, 0))
    fake.commit(ev(event, 1), length=length)
    with pytest.raises(RecordMismatch, match=str(record.SIZE)):
        reader.read()


def test_data_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        RingBufferReader(-1, 3000, record.FORMAT)


def test_wait_returns_within_its_timeout(ring):
    _, reader = ring()
    t0 = time.monotonic()
    reader.wait(0.05)  # a memfd always polls readable: this only checks that poll works on it
    assert time.monotonic() - t0 < 1.0
