"""Write throughput of the SQLite timeline store, in records per second (not a test).

    .venv/bin/python tests/bench/store_write.py [--batches 40] [--batch 5000] [--db PATH]

Records look like the tracker's: IPv4 loopback, an ephemeral client port, a service
port out of a handful, 5 spans (a client's close: SYN_SENT, ESTABLISHED, FIN_WAIT1,
FIN_WAIT2, TIME_WAIT). Three phases, as the daemon writes: sockets born and ended
between two drains (written once, closed: the common case under churn), sockets
written open, and the same written again closed (updates of the same ids).
The machine's churn ceiling is ~29,000 connections/s, i.e. ~58,000 sockets/s.
Besides wall-clock records/s it prints records per CPU second of this process, which
other load on the machine disturbs less.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.core.lifecycle import Lifecycle, Span  # noqa: E402
from tracer.store.sqlite import SqliteStore  # noqa: E402

STATES = ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT")


def record(i: int, t0: float, closed: bool, rng: random.Random) -> Lifecycle:
    t = t0 + i * 1.7e-5
    spans = []
    for k, state in enumerate(STATES):
        until = None if k == len(STATES) - 1 and not closed else round(t + rng.random() * 1e-3, 6)
        spans.append(Span(state, round(t, 6), until))
        t = until or t
    if closed:
        spans[-1] = Span("TIME_WAIT", spans[-1].since, round(spans[-1].since + 60, 6))
    port = (80, 443, 5432, 6379, 8080)[i % 5]
    # A host has few addresses of its own and talks to many: 3 local, 2,000 remote.
    return Lifecycle(id=i, netns=None, family="ipv4", laddr=f"10.0.0.{i % 3 + 1}",
                     lport=32768 + i % 28000, raddr=f"10.1.{i % 8}.{i % 250 + 1}", rport=port, role="active",
                     service_port=port, pid=1000 + i % 50, comm="client", open=not closed, states=spans)


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
        n, t0 = args.batches * args.batch, 1.7e9
        for b in range(0, args.prefill, args.batch):  # ids and times before the timed ones, as in life
            store.write([record(i, t0, True, rng) for i in range(b, min(args.prefill, b + args.batch))])
        if args.prefill:
            print(f"prefilled {args.prefill:,} records: {store.stats()['bytes'] / 2**20:,.0f} MiB")
        p = args.prefill
        for phase, closed, first in (("new, closed", True, p), ("new, open", False, p + n),
                                     ("rewrite, closed", True, p + n)):
            batches = [[record(i, t0, closed, rng) for i in range(first + b * args.batch,
                                                                  first + (b + 1) * args.batch)]
                       for b in range(args.batches)]
            start, cpu = time.perf_counter(), time.process_time()
            worst = 0.0
            for batch in batches:
                s = time.perf_counter()
                store.write(batch)
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
