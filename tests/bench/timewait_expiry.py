"""What the event reader pays a cycle for TIME_WAITs found in the kernel (not a test).

    .venv/bin/python tests/bench/timewait_expiry.py [--timewaits 100000]

A daemon started on a busy host finds its TIME_WAITs in the kernel's table; their
ends are the kernel's timers', not the model's FIFO. The reader calls expire() after
every batch (up to 50 times a second when idle, more under load), so its cost with
none due must not grow with how many are waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracer.core.kernel_socket import KernelSocket  # noqa: E402
from tracer.core.tracker import Tracker  # noqa: E402

SEC = 1_000_000_000
LO = bytes([127, 0, 0, 1]) + bytes(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timewaits", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    tracker = Tracker(60 * SEC, 1_000_000)
    start = 1000 * SEC
    found = [KernelSocket(1, 2, LO, 30000 + i % 30000, LO, 8000 + i // 30000, 6,
                          59 * SEC - i * (50 * SEC // args.timewaits)) for i in range(args.timewaits)]
    tracker.load_baseline(found, start)
    t0 = time.perf_counter()
    for i in range(args.calls):
        tracker.expire(start + i * 1_000_000)  # none due yet
    idle = (time.perf_counter() - t0) / args.calls
    t0 = time.perf_counter()
    tracker.expire(start + 60 * SEC)
    all_due = time.perf_counter() - t0
    print(f"{args.timewaits:,} TIME_WAITs found in the kernel: expire() {idle * 1e6:.1f} us a call with none "
          f"due; {all_due * 1e3:.0f} ms to end them all ({tracker.stats().timewait} left)")


if __name__ == "__main__":
    main()
