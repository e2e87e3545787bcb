"""Where the transitions the daemon does not count go: ftrace against the daemon.

    sudo .venv/bin/python tests/bench/unseen.py [RUNS] [SECONDS]

The bench's load (loopback churn in a namespace of its own) runs RUNS times with the
daemon, while an ftrace instance records every sock:inet_sock_set_state on the
bench's ports. ftrace goes through neither BPF nor perf, so it is the kernel's own
account. Each run prints the transitions ftrace saw and the daemon counted, by kind,
where they differ; the threads other than the load's that the kernel processed
transitions on top of; and, for each client life the daemon has ended without its
close, the thread its FIN_WAIT1 -> FIN_WAIT2 ran on. Measured here: the daemon
misses exactly what ran on top of a thread tracer/blindspots.py names.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer.bench import load as loads, tracers  # noqa: E402
from tracer.bench.namespace import Namespace  # noqa: E402
from tracer.bench.runs import Bench  # noqa: E402
from tracer.host import tracefs

# "  loadgen-31811 [001] ..s2. 43099.060261: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP
#  sport=59142 dport=1024 saddr=... daddr=... saddrv6=... daddrv6=... oldstate=TCP_FIN_WAIT1 newstate=TCP_FIN_WAIT2"
_EVENT = re.compile(r"\s*(?P<who>\S.*?-\d+)\s+\[\d+\]\s+(?P<flags>\S+)\s+(?P<ts>[\d.]+): inet_sock_set_state: \S+ \S+ "
                    r"sport=(?P<sport>\d+) dport=(?P<dport>\d+) \S+ \S+ \S+ \S+ "
                    r"oldstate=TCP_(?P<old>\w+) newstate=TCP_(?P<new>\w+)")
PORTS = (loads.PORT, loads.PORT + 1)  # the bench's two listeners (two load threads)


def counted(before: dict[str, float], after: dict[str, float]) -> collections.Counter:
    """The daemon's kernel counters for the bench ports, by (from, to), over the run."""
    out: collections.Counter = collections.Counter()
    for name, value in after.items():
        if name.startswith("tcpstate_transitions_total{") and any(f'port="{p}"' in name for p in PORTS):
            old = name.split('from_state="')[1].split('"')[0]
            new = name.split('to_state="')[1].split('"')[0]
            out[(old, new)] += int(value - before.get(name, 0))
    return out


def cut_short(db: Path, since: float, offset_s: float) -> dict[int, float]:
    """Client lives the daemon ended before their close: local port -> start (monotonic s)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = {}
        marks = ",".join("?" * len(PORTS))
        for lport, started, spans in conn.execute(
                f"SELECT lport, started, spans FROM lifecycles WHERE service_port IN ({marks}) AND started >= ? "
                "AND role = 'active'", [*PORTS, since]):
            if json.loads(spans)[-1][0] != "TIME_WAIT":
                found[lport] = started - offset_s
        return found
    finally:
        conn.close()


def one_run(b: Bench, workdir: Path, instance: Path) -> None:
    enable = instance / "events" / "sock" / "inet_sock_set_state" / "enable"
    d = tracers.Daemon(workdir, [])
    try:
        before = d.metrics()
        (instance / "trace").write_text("")
        offset_s = time.time() - time.monotonic()
        since = time.time()
        enable.write_text("1")
        load = b.churn()
        time.sleep(0.5)
        enable.write_text("0")
        after = d.settle()
    finally:
        d.stop()
    short = cut_short(d.db, since, offset_s)
    kernel: collections.Counter = collections.Counter()
    others: collections.Counter = collections.Counter()
    culprits = []
    with open(instance / "trace") as f:
        for line in f:
            m = _EVENT.match(line)
            if not m:
                continue
            kernel[(m["old"], m["new"])] += 1
            if not m["who"].startswith("loadgen-"):
                others[m["who"]] += 1
            port = int(m["sport"])
            if (m["old"], m["new"]) == ("FIN_WAIT1", "FIN_WAIT2") and port in short \
                    and abs(float(m["ts"]) - short[port]) < 0.05:
                culprits.append(f"client port {port}: FIN_WAIT1 -> FIN_WAIT2 on top of {m['who']} ({m['flags']})")
    daemon = counted(before, after)
    lost_before = tracers.lost_by_reason(before)
    lost = {r: n - lost_before.get(r, 0) for r, n in tracers.lost_by_reason(after).items()}
    overrun = sum(int(line.split()[-1]) for cpu in (instance / "per_cpu").glob("cpu*")
                  for line in (cpu / "stats").read_text().splitlines() if line.startswith("overrun"))
    print(f"{load['connections']:,} connections: ftrace saw {sum(kernel.values()):,} transitions, the daemon "
          f"counted {sum(daemon.values()):,}; lost {lost}; ftrace overruns {overrun}")
    for kind in sorted(set(kernel) | set(daemon)):
        if kernel[kind] != daemon[kind]:
            print(f"  {kind[0]} -> {kind[1]}: ftrace {kernel[kind]:,}, daemon {daemon[kind]:,}")
    print(f"  on top of threads other than the load's: {dict(others.most_common())}")
    for line in culprits:
        print(f"  {line}")
    sys.stdout.flush()


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    root = tracefs.ensure()
    instance = root / "instances" / f"tcpstate-unseen-{os.getpid()}"
    instance.mkdir()
    try:
        (instance / "buffer_size_kb").write_text("131072")  # per CPU: ~1.3 M events each
        (instance / "trace_clock").write_text("mono")  # the daemon's clock
        (instance / "events" / "sock" / "inet_sock_set_state" / "filter").write_text(
            " || ".join(f"sport == {p} || dport == {p}" for p in PORTS))
        with tempfile.TemporaryDirectory(prefix="tcpstate-unseen-") as tmp, Namespace() as ns:
            workdir = Path(tmp)
            b = Bench(ns, loads.build_loadgen(workdir), workdir, seconds, len(PORTS), [], log=print)
            for _ in range(runs):
                one_run(b, workdir, instance)
    finally:
        (instance / "events" / "sock" / "inet_sock_set_state" / "enable").write_text("0")
        instance.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
