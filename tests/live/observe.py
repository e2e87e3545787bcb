"""Reading what the daemon and the kernel say: /metrics samples, and ss."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.live.conftest import Daemon
from tracer.bench.tracers import scrape, sum_samples


def transitions_during(url: str, port: int, run: Callable[[], object], expected: int,
                       timeout: float = 10.0) -> float:
    """The transitions the daemon at ``url`` counts on ``port`` for what ``run()`` makes:
    /metrics read before it, then again until ``expected`` are counted or ``timeout`` passes."""
    before = sum_samples(scrape(url), "tcpstate_transitions_total", [port])
    run()
    deadline = time.monotonic() + timeout
    while True:
        counted = sum_samples(scrape(url), "tcpstate_transitions_total", [port]) - before
        if counted >= expected or time.monotonic() > deadline:
            return counted
        time.sleep(0.2)


def samples(text: str, name: str, **labels: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def unseen(daemon: Daemon) -> int:
    """What the daemon counts of the kernel's transitions it could not see: those the kernel
    skipped the program for (it was already running on that CPU), and lives it found ended
    without seeing their end, at the next birth at the address or the next read of the
    kernel's table (processed on top of a thread the kernel runs no BPF program for; see
    tracer/blindspots.py)."""
    text = daemon.metrics()
    return int(sum(samples(text, "tcpstate_events_lost_total", reason="program_not_run").values())
               + sum(samples(text, "tcpstate_socket_corrections_total", reason="gone").values()))


def ss_timewait(port: int) -> int:
    out = subprocess.run(["ss", "-Htan", "state", "time-wait", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def timewait_metric(daemon: Daemon, port: int) -> float:
    return sum(samples(daemon.metrics(), "tcpstate_sockets", port=str(port), state="TIME_WAIT").values())


def corrections(daemon: Daemon, reason: str) -> float:
    return sum(samples(daemon.metrics(), "tcpstate_timewait_corrections_total", reason=reason).values())


def wait_timewait_equal(daemon: Daemon, port: int, expected: int | None = None, timeout: float = 15.0) -> int:
    """Waits until the model's TIME_WAIT count for ``port`` equals the kernel's (and
    ``expected``, when given); returns the count."""
    deadline = time.monotonic() + timeout
    while True:
        model, kernel = timewait_metric(daemon, port), ss_timewait(port)
        if model == kernel and expected in (None, kernel):
            return kernel
        if time.monotonic() > deadline:
            raise AssertionError(f"TIME_WAIT on port {port}: model {model}, kernel {kernel}, expected {expected}")
        time.sleep(0.25)
