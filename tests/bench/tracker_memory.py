"""Bytes of Python heap the tracker holds per open socket (not a test).

    .venv/bin/python tests/bench/tracker_memory.py [--connections 100000]

Opens the given number of loopback connections in a tracker as the daemon runs it
(lives kept for the timeline, drained once), both ends established, the way
`tcpstate-tracer bench` holds them, and prints what tracemalloc counts, by line.
Every record carries its own copies of the addresses and the command name, as
struct.unpack makes them from the ring buffer.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.core.states import Role, TcpState as S  # noqa: E402
from tracer.core.tracker import Tracker  # noqa: E402

LOOP = bytes([127, 0, 0, 1]) + bytes(12)
COMM = b"loadgen".ljust(16, b"\0")


def event(ts: int, sk: int, sport: int, dport: int, role: Role, old: S, new: S) -> tuple:
    fresh = bytes(bytearray(LOOP)), bytes(bytearray(LOOP)), bytes(bytearray(COMM))
    return (ts, sk, fresh[0], fresh[1], 4242, sport, dport, 1024, 2, 0, int(old), int(new), int(role), 0, fresh[2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=100_000)
    args = p.parse_args()
    n = args.connections
    tracker = Tracker(60 * 10**9, 1 << 20, keep_lifecycles=True)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ts = 10**15
    for c in range(n):
        client, server = 0xFFFF0000_00000000 + 2 * c, 0xFFFF0000_00000001 + 2 * c
        eport = 1025 + c % 60000
        tracker.apply_batch([
            event(ts, client, 0, 1024, Role.ACTIVE, S.CLOSE, S.SYN_SENT),
            event(ts + 1000, server, 1024, eport, Role.PASSIVE, S.LISTEN, S.SYN_RECV),
            event(ts + 2000, client, eport, 1024, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED),
            event(ts + 3000, server, 1024, eport, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED),
        ])
        ts += 10_000
    del tracker.drain_raw()[:]  # what the store took; the drained tuples go with it
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    print(f"{len(tracker.table.sockets):,} sockets: {held / 1e6:.0f} MB, {held / len(tracker.table.sockets):.0f} bytes a socket")
    for stat in tracemalloc.take_snapshot().statistics("lineno")[:8]:
        print(f"  {stat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
