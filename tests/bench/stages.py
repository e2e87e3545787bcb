"""Where the daemon's cost goes, stage by stage, on the real kernel (not a test).

    sudo .venv/bin/python tests/bench/stages.py [--seconds 5] [--rounds 2]

Runs the bench's churn (tracer/bench/loadgen.c, each run in a fresh namespace) with,
side by side and alternating: nothing attached; the program attached and nobody
reading (the BPF side alone: the ring buffer holds a 5 s run); a reader that only
decodes what it reads; a reader that applies it to a tracker with a journal (the
daemon's writer thread without the rest of the daemon). Prints connections/s, the
share of untraced, and the reader's CPU seconds, so that each stage's cost is the
difference to the one before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.bench.load import LISTENER_PER_THREAD, build_loadgen, churn  # noqa: E402
from tracer.bench.namespace import Namespace  # noqa: E402
from tracer.core.tracker import Tracker  # noqa: E402
from tracer.daemon.memory import tune_gc  # noqa: E402
from tracer.host import headers, tracefs  # noqa: E402

STAGES = ("untraced", "program only", "decode", "tracker")


def run(stage: str, ns: Namespace, loadgen: Path, seconds: float) -> tuple[float, float]:
    """(connections/s, reader CPU s) of one run."""
    ns.renew()
    if stage == "untraced":
        load = churn(ns, loadgen, LISTENER_PER_THREAD, seconds, 2)
        return load["connections"] / load["seconds"], 0.0
    from tracer.sources.bcc import BccSource

    source = BccSource(ringbuf_pages=64 * 256)
    tracker = Tracker(60 * 10**9, 524288, keep_lifecycles=True)
    stop, cpu = threading.Event(), [0.0]

    def reader() -> None:
        while not stop.is_set():
            if stage == "program only":
                time.sleep(0.1)
                continue
            started = time.thread_time()
            batch = source.read_records(0.2)
            taken = source.sweep()
            if stage == "tracker":
                tracker.apply_records(batch)
                if taken:
                    tracker.apply_records(taken)  # the journal keeps the lives; nothing is written
            cpu[0] += time.thread_time() - started

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        load = churn(ns, loadgen, LISTENER_PER_THREAD, seconds, 2)
    finally:
        stop.set()
        thread.join(5)
        source.close()
    return load["connections"] / load["seconds"], cpu[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    tracefs.ensure()
    headers.prepare()
    tune_gc()
    rates: dict[str, list[float]] = {s: [] for s in STAGES}
    cpus: dict[str, list[float]] = {s: [] for s in STAGES}
    with tempfile.TemporaryDirectory() as tmp, Namespace() as ns:
        loadgen = build_loadgen(Path(tmp))
        for r in range(args.rounds):
            for stage in STAGES:
                rate, cpu = run(stage, ns, loadgen, args.seconds)
                rates[stage].append(rate)
                cpus[stage].append(cpu)
                print(f"round {r + 1}/{args.rounds} {stage:13} {rate:9,.0f} connections/s, reader CPU {cpu:.2f} s",
                      flush=True)
    base = statistics.median(rates["untraced"])
    print(f"{args.seconds:g} s runs, medians of {args.rounds}:")
    for stage in STAGES:
        rate = statistics.median(rates[stage])
        print(f"  {stage:13} {rate:9,.0f} connections/s  {rate / base:6.1%}  reader CPU {statistics.median(cpus[stage]):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
