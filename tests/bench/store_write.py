"""Write throughput of the SQLite timeline store, in records per second (not a test).

    .venv/bin/python tests/bench/store_write.py [--batches 40] [--batch 5000] [--db PATH]

Records are the tracker's hand-over (tracer/core/lifecycle.RawLife: monotonic
nanoseconds, and the offset that makes them Unix time), written through the one
write path the daemon uses: IPv4, an ephemeral client port, a service port out of
a handful, 5 spans (a client's close: SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2,
TIME_WAIT). Three phases, as the daemon writes: sockets born and ended between two
drains (written once, closed: the common case under churn), sockets written open,
and the same written again closed (updates of the same ids). Besides wall-clock
records/s it prints records per CPU second of this process, which other load on the
machine disturbs less; compare them with the churn ceiling of the bench's host
(README, Performance).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.core.states import Role, TcpState  # noqa: E402
from tracer.store.sqlite import SqliteStore  # noqa: E402

STATES = (TcpState.SYN_SENT, TcpState.ESTABLISHED, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.TIME_WAIT)
MONO_START_NS = 5_000 * 10**9  # the daemon's records carry CLOCK_MONOTONIC, seconds since boot
OFFSET_NS = 1_700_000_000 * 10**9 - MONO_START_NS  # Unix minus monotonic (Clock.offset_ns)
COMM = b"client".ljust(16, b"\0")
# A host has few addresses of its own and talks to many: 3 local, 2,000 remote.
LOCAL = [bytes([10, 0, 0, k + 1]) + bytes(12) for k in range(3)]
REMOTE = [bytes([10, 1, a, b + 1]) + bytes(12) for a in range(8) for b in range(250)]


def record(i: int, closed: bool, rng: random.Random) -> tuple:
    t = MONO_START_NS + i * 17_000
    history = []
    for state in STATES:
        history += (state.value, t)
        t += rng.randrange(1_000_000)
    end_ns = history[-1] + 60 * 10**9 if closed else None
    port = (80, 443, 5432, 6379, 8080)[i % 5]
    return (i, 0, 2, LOCAL[i % 3], 32768 + i % 28000, REMOTE[(i % 8) * 250 + i % 250], port, Role.ACTIVE.value,
            port, 1000 + i % 50, COMM, tuple(history), end_ns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--db", type=Path, default=None)
    p.add_argument("--prefill", type=int, default=0,
                   help="closed records written first, untimed: the store's size at steady state "
                        "(about 2,400,000 make the default 1 GiB limit)")
    args = p.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(args.db or Path(tmp) / "bench.db", 7 * 86400, 1 << 40)
        n = args.batches * args.batch
        for b in range(0, args.prefill, args.batch):  # ids and times before the timed ones, as in life
            store.write([record(i, True, rng) for i in range(b, min(args.prefill, b + args.batch))],
                            OFFSET_NS)
        if args.prefill:
            print(f"prefilled {args.prefill:,} records: {store.stats()['bytes'] / 2**20:,.0f} MiB")
        p = args.prefill
        for phase, closed, first in (("new, closed", True, p), ("new, open", False, p + n),
                                     ("rewrite, closed", True, p + n)):
            batches = [[record(i, closed, rng) for i in range(first + b * args.batch,
                                                                  first + (b + 1) * args.batch)]
                       for b in range(args.batches)]
            start, cpu = time.perf_counter(), time.process_time()
            worst = 0.0
            for batch in batches:
                s = time.perf_counter()
                store.write(batch, OFFSET_NS)
                worst = max(worst, time.perf_counter() - s)
            took, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"{phase:16} {n:>9,} records in {args.batches} batches of {args.batch:,}: "
                  f"{n / took:>9,.0f} records/s, {n / cpu:>9,.0f} per CPU second "
                  f"(slowest batch {worst * 1000:.0f} ms)")
        stats = store.stats()
        print(f"stats: {stats}  ({stats['bytes'] / stats['rows']:.0f} bytes a record on disk)")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
