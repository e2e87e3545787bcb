"""The bench's load: tracer/bench/loadgen.c, built with gcc on the host it measures,
in one of two shapes, and the transitions each shape makes.

A connection is 10 transitions (5 a side) and a listener 2, in both shapes
(loadgen.c's header says why), so the count a run generated is known exactly from
the connections and listeners the load generator reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracer.bench.errors import BenchError
from tracer.bench.namespace import Namespace

LOADGEN_SRC = Path(__file__).resolve().parent / "loadgen.c"  # package data: works from an installed package
PORT = 1024  # the namespace's own loopback: below its ephemeral range, above what services use
TRANSITIONS_PER_CONNECTION = 10
TRANSITIONS_PER_LISTENER = 2


@dataclass(frozen=True)
class Shape:
    """How the load's threads share listeners."""

    name: str  # as `--load` names it
    mode: str  # the load generator's mode
    shared: bool  # one listener for every thread, or one each

    def listeners(self, threads: int) -> int:
        return 1 if self.shared else threads

    def ports(self, threads: int) -> list[int]:
        """The service ports the load uses: the ones whose transitions are the run's."""
        return [PORT + i for i in range(self.listeners(threads))]

    def generated(self, connections: int, threads: int) -> int:
        """Transitions a run of this shape made: every connection's and every listener's."""
        return TRANSITIONS_PER_CONNECTION * connections + TRANSITIONS_PER_LISTENER * self.listeners(threads)


LISTENER_PER_THREAD = Shape("listener-per-thread", "churn", shared=False)
SHARED_LISTENER = Shape("shared-listener", "shared-listener", shared=True)
SHAPES = {s.name: s for s in (LISTENER_PER_THREAD, SHARED_LISTENER)}


def build_loadgen(into: Path) -> Path:
    if not LOADGEN_SRC.exists():
        raise BenchError(f"{LOADGEN_SRC} is missing: reinstall tcpstate-tracer (it is the package's data)")
    if shutil.which("gcc") is None:
        raise BenchError("the bench builds its load generator with gcc: install it (`make test-setup`)")
    out = into / "loadgen"
    done = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(LOADGEN_SRC)],
                          capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"building the load generator failed: {done.stderr.strip()}")
    return out


def churn(ns: Namespace, loadgen: Path, shape: Shape, seconds: float, threads: int) -> dict:
    """One bounded run of the load in the namespace: the load generator's JSON line
    (connections, errors, seconds, threads, listeners)."""
    out = ns.run(str(loadgen), shape.mode, str(PORT), f"{seconds:g}", str(threads))
    try:
        result = json.loads(out)
    except ValueError:
        raise BenchError(f"the load generator printed {out.strip()!r}, not its JSON line") from None
    if result["errors"]:
        raise BenchError(f"the load generator saw {result['errors']} failed connections")
    if result.get("listeners") != shape.listeners(threads):
        raise BenchError(f"the load generator opened {result.get('listeners')} listeners; "
                         f"the {shape.name} shape counts on {shape.listeners(threads)}")
    return result


def hold_argv(loadgen: Path, count: int) -> list[str]:
    """The load generator holding ``count`` established connections open (4 listeners)."""
    return [str(loadgen), "hold", str(PORT), str(count)]
