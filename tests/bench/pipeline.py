"""Python cost per event of the daemon's hot path, stage by stage (not a test).

    .venv/bin/python tests/bench/pipeline.py [--connections 200000] [--profile]

Feeds the events of loopback churn (10 transitions a connection, as
`tcpstate-tracer bench` makes them) through the stages the daemon runs: decoding
the ring buffer's records, the tracker, the timeline's drain and the SQLite store.
Prints CPU microseconds per event for each stage, twice, side by side: with the
records the kernel program sends (a socket's life in one, at its close) and with
one record a transition (how the program sent them before). The budget at the
machine's churn ceiling (~290,000 transitions/s, one core) is about 3 us for all.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.core import record  # noqa: E402
from tracer.daemon import tune_gc  # noqa: E402
from tracer.core.states import Role, TcpState  # noqa: E402
from tracer.core.tracker import Tracker  # noqa: E402
from tracer.sources.ringbuf import HEADER  # noqa: E402
from tracer.store.sqlite import SqliteStore  # noqa: E402

S = TcpState
LOOP = bytes([127, 0, 0, 1]) + bytes(12)
COMM = b"loadgen".ljust(16, b"\0")
CLIENT = ((S.CLOSE, S.SYN_SENT), (S.SYN_SENT, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT1),
          (S.FIN_WAIT1, S.FIN_WAIT2), (S.FIN_WAIT2, S.CLOSE))
SERVER = ((S.LISTEN, S.SYN_RECV), (S.SYN_RECV, S.ESTABLISHED), (S.ESTABLISHED, S.CLOSE_WAIT),
          (S.CLOSE_WAIT, S.LAST_ACK), (S.LAST_ACK, S.CLOSE))
ORDER = (0, 5, 1, 6, 2, 7, 3, 8, 4, 9)  # client and server interleaved as on the wire


def ring_bytes(connections: int, port: int, t0: int, lives: bool) -> tuple[bytes, int, int]:
    """The records as the ring buffer holds them (an 8-byte header, the record, padding)
    and how many: a socket's life in one (sent at its close), or one a transition."""
    stride = (HEADER + record.RECORD_SIZE + 7) & ~7
    pad = bytes(stride - HEADER - record.RECORD_SIZE)
    header = struct.pack("<II", record.RECORD_SIZE, 0)
    out = []
    for c in range(connections):
        ts = t0 + c * 35_000
        eport = 32768 + c % 28000
        client_sk, server_sk = 0xFFFF0000_00000000 + 2 * c, 0xFFFF0000_00000001 + 2 * c
        steps = [(client_sk, eport, port, int(Role.ACTIVE), o, n) for o, n in CLIENT]
        steps += [(server_sk, port, eport, int(Role.PASSIVE), o, n) for o, n in SERVER]
        events = {}
        for i, k in enumerate(ORDER):
            sk, sport, dport, role, old, new = steps[k]
            ev = (ts + i * 3_000, sk, LOOP, LOOP, 4242, sport, dport, port, 2, 0, int(old), int(new), role, 0, COMM)
            if lives:
                events.setdefault(sk, []).append(ev)
                if new == S.CLOSE:
                    out.append(header + record.pack(events.pop(sk)) + pad)
            else:
                out.append(header + record.pack([ev]) + pad)
    return b"".join(out), stride, len(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=65536, help="records decoded at a time")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions as well")
    p.add_argument("--default-gc", action="store_true", help="keep Python's collector thresholds "
                   "(the daemon raises them: tracer/daemon.py tune_gc)")
    args = p.parse_args()
    if not args.default_gc:
        tune_gc()
    results = {name: run(args, lives) for name, lives in (("a life a record", True), ("a transition a record", False))}
    n = args.connections * 10
    print(f"{n:,} events ({args.connections:,} connections, {2 * args.connections:,} sockets stored), "
          "CPU us per event:")
    names = list(results)
    print(f"  {'stage':7} " + "".join(f"{name:>24}" for name in names))
    for stage in ("decode", "apply", "drain", "store", "total"):
        print(f"  {stage:7} " + "".join(f"{results[name][stage] / n * 1e6:24.2f}" for name in names))
    print("  events per CPU second: " + "; ".join(f"{name} {n / results[name]['total']:,.0f}" for name in names))
    return 0


def run(args: argparse.Namespace, lives: bool) -> dict[str, float]:
    t0 = time.monotonic_ns()
    data, stride, n = ring_bytes(args.connections, 1024, t0, lives)
    # The daemon's reader hands the ring's bytes over as they are (tracer/core/record.RecordBatch).
    def as_batch(data: bytes) -> record.RecordBatch:
        return record.RecordBatch(data, HEADER, stride)

    tracker = Tracker(60 * 10**9, 1 << 20, keep_lifecycles=True)
    offset = time.time_ns() - t0
    prof = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db", 86400, 1 << 40)
        cpu = dict.fromkeys(("decode", "apply", "drain", "store"), 0.0)
        per_flush = 58_000 * (1 if lives else 5)  # a second of churn at the ceiling between two drains
        if prof:
            prof.enable()
        for start in range(0, n, per_flush):
            end = min(n, start + per_flush)
            for b in range(start, end, args.batch):
                c = time.process_time()
                batch = as_batch(data[b * stride:min(end, b + args.batch) * stride])
                c2 = time.process_time()
                tracker.apply_records(batch)
                c3 = time.process_time()
                cpu["decode"] += c2 - c
                cpu["apply"] += c3 - c2
            c = time.process_time()
            # TIME_WAITs end 60 s later in life; here they stay open: their rewrite is not timed.
            records = tracker.drain_raw()
            c2 = time.process_time()
            store.write(records, offset)
            c3 = time.process_time()
            cpu["drain"] += c2 - c
            cpu["store"] += c3 - c2
        if prof:
            prof.disable()
        cpu["total"] = sum(cpu.values())
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return cpu


if __name__ == "__main__":
    sys.exit(main())
