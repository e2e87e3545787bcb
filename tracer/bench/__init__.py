"""`tcpstate-tracer bench`: loopback churn with nothing attached, with the daemon, and
with bcc's tcpstates, in alternating runs, and what each kept of it.

The load is tracer/bench/loadgen.c (built here with gcc; tracer.bench.load), run in
a network namespace the bench makes and deletes (tracer.bench.namespace), fresh for
every run. The generated count of transitions is known exactly; the daemon's kernel
counters, the events its core received and the transitions its timeline stored are
compared against it, tcpstates' printed lines likewise (tracer.bench.runs, with the
tracers' processes in tracer.bench.tracers). Figures per setup are the median over
the rounds (tracer.bench.report). CPU seconds are the tracer's own (all threads),
from the start of the load until it has taken in the last event.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tracer.bench import load as loads
from tracer.bench import report
from tracer.bench.errors import BenchError
from tracer.bench.namespace import Namespace
from tracer.bench.runs import Bench, Run
from tracer.bench.tracers import TCPSTATES

__all__ = ["BenchError", "main", "probe_blind_spots"]

BLIND_PROBE_S = 5.0


def probe_blind_spots() -> str:
    """tracer.host.blindspots: threads on top of which the kernel runs no BPF program. A
    transition processed there is missed by the daemon and by tcpstates alike, and no
    counter says so: the reason a run can miss "nothing lost" by a transition or two."""
    from tracer.host import blindspots, headers, tracefs

    try:
        headers.prepare()
        tracefs.ensure()  # as the daemon does: a fresh machine has it unmounted
    except (headers.HeadersError, tracefs.TracefsError) as exc:
        return f"not probed: {exc}"
    return blindspots.summary(BLIND_PROBE_S)[0]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(seconds: float, rounds: int, threads: int, compare: bool, hold: int, soak: float,
         json_out: Path | None, daemon_flags: list[str], load: str = loads.LISTENER_PER_THREAD.name,
         warm_s: float = 0.0) -> int:
    """The whole bench: the probe, the alternating runs and their table, the held
    connections, the soak, the targets. 0 when every target is met, 3 when one is not."""
    if os.geteuid() != 0:
        raise BenchError("the bench loads BPF programs and makes a network namespace: run it as root")
    if compare and not TCPSTATES.exists():
        raise BenchError(f"{TCPSTATES} is missing: install Debian's bpfcc-tools for --compare-tcpstates")
    if load not in loads.SHAPES:
        raise BenchError(f"no load shape {load!r}: one of {', '.join(loads.SHAPES)}")
    shape = loads.SHAPES[load]
    setups = ["untraced", "daemon"] + (["tcpstates"] if compare else [])
    with tempfile.TemporaryDirectory(prefix="tcpstate-bench-") as tmp, Namespace() as ns:
        workdir = Path(tmp)
        bench = Bench(ns, loads.build_loadgen(workdir), workdir, seconds, threads, daemon_flags,
                      log=_progress, shape=shape, warm_s=warm_s)
        _progress(f"tcpstate-tracer bench: {rounds} rounds of {seconds:g} s of loopback churn ({shape.name}), "
                  f"{threads} connection(s) at a time, each run in a fresh namespace {ns.name}"
                  + (f", the daemon running {warm_s:g} s before each of its runs" if warm_s else "")
                  + f"; setups alternate: {', '.join(setups)}")
        blind_spots = probe_blind_spots()
        _progress(f"blind spots ({BLIND_PROBE_S:g} s probe): {blind_spots}")
        runs: list[Run] = []
        for i in range(rounds):
            for setup in setups:
                run = {"untraced": bench.untraced, "daemon": bench.daemon, "tcpstates": bench.tcpstates}[setup]()
                runs.append(run)
                _progress(f"round {i + 1}/{rounds} {setup:9}: {run.rate:,.0f} connections/s"
                          + (f", {run.lost:,} lost" if run.lost is not None else ""))
        print(report.table(runs), flush=True)  # whatever comes next, these figures are out
        held = soaked = None
        failures = []
        if hold:
            _progress(f"holding {hold:,} established connections open...")
            try:
                held = bench.hold(hold)
            except BenchError as exc:
                failures.append((f"{hold:,} established connections held", False, str(exc)))
        if soak:
            _progress(f"soak: {soak:g} s of churn with the daemon...")
            try:
                soaked = bench.soak(soak)
            except BenchError as exc:
                failures.append((f"{soak:g} s soak", False, str(exc)))
    if held:
        print("\n" + report.held(held))
    if soaked:
        print("\n" + report.soaked(soaked))
    print(f"\nthreads whose softirq work no BPF program sees ({BLIND_PROBE_S:g} s probe before the runs): "
          f"{blind_spots}")
    result = report.targets(runs, held, soaked)
    result.checks += failures
    print("\ntargets:")
    for name, ok, detail in result.checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")
    if json_out:
        json_out.write_text(json.dumps({
            "load": shape.name, "threads": threads, "warm_s": warm_s,
            "runs": [asdict(r) | {"rate": r.rate} for r in runs],
            "hold": asdict(held) if held else None, "soak": asdict(soaked) if soaked else None,
            "blind_spots": blind_spots,
            "targets": [{"name": n, "met": ok, "detail": d} for n, ok, d in result.checks]}, indent=1))
    return 0 if result.met else 3
