"""Threads whose softirq work no BPF tracing program sees.

TCP state changes caused by arriving segments run in softirq context, on top of
whichever thread the CPU happened to be running. On some hosts there are threads
on top of which the kernel runs no BPF tracing program at all, and counts no
program miss either; ftrace, which does not go through BPF or perf, still sees
those events. A transition processed there is invisible to any BPF-based tracer
(tests/bench/unseen.py shows it for the daemon; README "Performance" names the
threads found on the project's machines).

`probe()` finds such threads: it counts irq:softirq_entry per thread with a BPF
program (bpf/blindspots.bpf.c) and, over the same moments, with an ftrace
instance, and names the threads ftrace saw doing softirq work that the program
never saw. The program is attached before ftrace is enabled and read after it is
disabled, so a thread the program sees is counted by it at least as often as by
ftrace.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tracer.host import tracefs

PROGRAM = Path(str(resources.files("tracer.bpf") / "blindspots.bpf.c"))
MAX_THREADS = 65536  # threads the program counts at once (BLINDSPOTS_MAX_THREADS)
EVENT = "irq/softirq_entry"
MIN_EVENTS = 2  # ftrace must have seen a thread this often before it is called blind
BUFFER_KB = 8192  # per CPU; an overrun only makes ftrace's counts lower bounds
# "  comm-with-dashes-123   [001] ..s1. 43802.419473: softirq_entry: vec=1 ..."
_LINE = re.compile(r"^\s*(.*)-(\d+)\s+\[\d+\]")


class ProbeError(RuntimeError):
    """The probe could not run (one line)."""


@dataclass(frozen=True)
class BlindThread:
    tid: int
    comm: str
    ftrace_events: int  # softirq entries ftrace saw on top of this thread
    bpf_runs: int  # the times the BPF program ran for them (0 for a blind thread)


def ftrace_counts(lines: list[str]) -> tuple[Counter, dict[int, str]]:
    """softirq_entry events per thread id in ftrace's text output, and their names."""
    counts: Counter = Counter()
    names: dict[int, str] = {}
    for line in lines:
        if line.startswith("#") or "softirq_entry" not in line:
            continue
        m = _LINE.match(line)
        if m:
            tid = int(m[2])
            counts[tid] += 1
            names.setdefault(tid, m[1])
    return counts, names


def blind(ftrace: Counter, names: dict[int, str], bpf: dict[int, int]) -> list[BlindThread]:
    """Threads ftrace saw at least MIN_EVENTS times that the program never ran for."""
    return sorted((BlindThread(tid, names.get(tid, "?"), n, bpf.get(tid, 0))
                   for tid, n in ftrace.items() if n >= MIN_EVENTS and not bpf.get(tid, 0)),
                  key=lambda b: -b.ftrace_events)


@dataclass(frozen=True)
class Probe:
    blind: list[BlindThread]
    ftrace: Counter  # softirq entries per thread id, as ftrace saw them
    bpf: dict[int, int]  # the same, as the BPF program saw them (over a longer window)


def probe(seconds: float = 5.0, root: Path | None = None) -> Probe:
    """Watches softirq work for ``seconds``: the threads the BPF program never saw."""
    try:
        import bcc  # noqa: PLC0415 (deliberately lazy)
    except ImportError:
        raise ProbeError("the bcc Python module is missing (python3-bpfcc)") from None
    root = root or tracefs.find()
    if root is None:
        raise ProbeError("tracefs is not mounted")
    instance = root / "instances" / f"tcpstate-blindspots-{os.getpid()}"
    try:
        program = bcc.BPF(src_file=str(PROGRAM).encode(), cflags=[f"-DBLINDSPOTS_MAX_THREADS={MAX_THREADS}"])
    except Exception as exc:  # bcc raises bare Exception for compile and load errors
        raise ProbeError(f"the probe's BPF program did not load: {exc}") from None
    try:
        instance.mkdir()
        try:
            (instance / "buffer_size_kb").write_text(str(BUFFER_KB))
            enable = instance / "events" / EVENT / "enable"
            enable.write_text("1")
            time.sleep(seconds)
            enable.write_text("0")
            with open(instance / "trace") as f:
                lines = f.readlines()
        finally:
            instance.rmdir()
        runs = {k.value: v.value for k, v in program[b"runs"].items()}
        if len(runs) >= MAX_THREADS:
            raise ProbeError(f"{MAX_THREADS} threads or more did softirq work: the probe's map was full, "
                             "and a thread it could not count would be named blind")
    except OSError as exc:
        raise ProbeError(f"ftrace instance {instance}: {exc.strerror or exc}") from None
    finally:
        program.cleanup()
    counts, names = ftrace_counts(lines)
    return Probe(blind(counts, names, runs), counts, runs)


def describe(threads: list[BlindThread], seconds: float) -> str:
    """One line: what the probe found."""
    if not threads:
        return f"none in {seconds:g} s: BPF saw the softirq work of every thread ftrace saw"
    by_comm: dict[str, list[BlindThread]] = {}
    for t in threads:
        by_comm.setdefault(t.comm, []).append(t)
    named = ", ".join(f"{comm} (tid {', '.join(str(t.tid) for t in ts)})" for comm, ts in by_comm.items())
    return (f"no BPF program ran for softirq work on top of {named}: ftrace saw "
            f"{sum(t.ftrace_events for t in threads)} softirqs there in {seconds:g} s; TCP transitions "
            "processed there are invisible to this and any BPF tracer")


def summary(seconds: float, root: Path | None = None) -> tuple[str, bool]:
    """What a probe of ``seconds`` found, in one line, and whether that is a warning
    (threads found blind, or the probe could not run)."""
    try:
        threads = probe(seconds, root).blind
    except ProbeError as exc:
        return f"not probed: {exc}", True
    return describe(threads, seconds), bool(threads)
