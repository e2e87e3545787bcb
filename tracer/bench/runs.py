"""The bench's runs: the load with nothing attached, with the daemon, with bcc's
tcpstates, then the held connections and the soak; what each kept of the load.

Every run starts in a fresh network namespace: at full churn the TIME_WAITs an
earlier run left fill the namespace's table within seconds, after which the kernel
makes no more of them and a connection no longer costs what it did, so runs compare
fairly only from the same empty start (README "Performance").
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracer.bench import load as loads
from tracer.bench.errors import BenchError
from tracer.bench.load import Shape
from tracer.bench.namespace import Namespace
from tracer.bench.tracers import (Daemon, Tcpstates, cpu_s, get, lost_by_reason, status_mb, stored_transitions,
                                  sum_samples)


@dataclass
class Run:
    setup: str  # "untraced", "daemon", "tcpstates"
    connections: int
    seconds: float
    generated: int  # transitions the load made
    counted: int | None = None  # by the daemon's kernel counters (bench ports)
    delivered: int | None = None  # reached the tracer's user space (the whole host's events)
    stored: int | None = None  # in the daemon's timeline (bench ports)
    lost: int | None = None  # reported lost by the tracer
    # Lives the daemon found ended without seeing their end (a new socket at their address, or
    # absent from the kernel's table): what a blind thread (tracer.host.blindspots) leaves behind.
    gone: int | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    ready_s: float | None = None

    @property
    def rate(self) -> float:
        return self.connections / self.seconds


@dataclass
class Hold:
    connections: int
    rss_mb: float
    scrape_s: float
    tracked: int
    ready_with_sockets_s: float


@dataclass
class Soak:
    seconds: float
    connections: int
    rss_mb: list[float] = field(default_factory=list)  # one sample a load interval
    lost_by_interval: list[int] = field(default_factory=list)  # events lost in each interval
    lost: int = 0
    # The timeline under sustained churn: sockets written, and dropped while waiting for the store.
    timeline_written: int = 0
    timeline_dropped: int = 0


class Bench:
    """The runs, in the bench's namespace, with its load generator and load shape.
    ``warm_s``: how long the daemon runs before the load of each of its runs starts."""

    def __init__(self, ns: Namespace, loadgen: Path, workdir: Path, seconds: float, threads: int,
                 daemon_flags: list[str], log: Callable[[str], None] = print,
                 shape: Shape = loads.LISTENER_PER_THREAD, warm_s: float = 0.0) -> None:
        self.ns, self.loadgen, self.workdir = ns, loadgen, workdir
        self.seconds, self.threads = seconds, threads
        self.daemon_flags = daemon_flags
        self.shape, self.warm_s = shape, warm_s
        self.ports = shape.ports(threads)
        self.log = log

    def churn(self, seconds: float | None = None) -> dict:
        """The load, in the namespace as it is."""
        return loads.churn(self.ns, self.loadgen, self.shape, seconds or self.seconds, self.threads)

    def _generated(self, load: dict) -> int:
        return self.shape.generated(load["connections"], load["threads"])

    def untraced(self) -> Run:
        self.ns.renew()
        load = self.churn()
        return Run("untraced", load["connections"], load["seconds"], self._generated(load))

    def daemon(self) -> Run:
        # The namespace is renewed before the daemon starts: started first, it would load
        # the previous run's TIME_WAITs (some 140,000 after a 5 s churn) into its baseline
        # and its timeline, and write them during this run, which then deletes them. The
        # untraced run pays for no such thing.
        self.ns.renew()
        d = Daemon(self.workdir, self.daemon_flags)
        try:
            if self.warm_s:
                time.sleep(self.warm_s)
            before = d.metrics()
            cpu0 = cpu_s(d.proc.pid)
            load_start = time.time()
            load = self.churn()
            after = d.settle()
            cpu = cpu_s(d.proc.pid) - cpu0
            peak = status_mb(d.proc.pid, "VmHWM")
        finally:
            d.stop()
        run = Run("daemon", load["connections"], load["seconds"], self._generated(load))
        run.counted = (sum_samples(after, "tcpstate_transitions_total", self.ports)
                       - sum_samples(before, "tcpstate_transitions_total", self.ports))
        run.delivered = int(after["tcpstate_events_received_total"] - before["tcpstate_events_received_total"])
        run.lost = sum_samples(after, "tcpstate_events_lost_total") - sum_samples(before, "tcpstate_events_lost_total")
        gone = 'tcpstate_socket_corrections_total{reason="gone"}'
        run.gone = sum_samples(after, gone) - sum_samples(before, gone)
        run.stored = stored_transitions(d.db, self.ports, load_start)
        run.cpu_s, run.peak_rss_mb, run.ready_s = cpu, peak, d.ready_s
        return run

    def tcpstates(self) -> Run:
        t = Tcpstates(self.workdir)
        try:
            self.ns.renew()
            cpu0 = cpu_s(t.proc.pid)
            load = self.churn()
            t.settle()
            cpu = cpu_s(t.proc.pid) - cpu0
            peak = status_mb(t.proc.pid, "VmHWM")
        finally:
            t.stop()
        run = Run("tcpstates", load["connections"], load["seconds"], self._generated(load))
        run.delivered = t.printed()
        run.lost = t.lost()
        run.cpu_s, run.peak_rss_mb, run.ready_s = cpu, peak, t.ready_s
        return run

    def hold(self, count: int) -> Hold:
        """The daemon with `count` established connections (2 sockets each) held open."""
        self.ns.renew()  # the churn's TIME_WAITs are not what is measured here
        d = Daemon(self.workdir, self.daemon_flags)
        holder = None
        try:
            holder = subprocess.Popen(self.ns.cmd(*loads.hold_argv(self.loadgen, count)),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            line = holder.stdout.readline()
            if not line.startswith("ready"):
                raise BenchError(f"the load generator could not hold {count} connections: "
                                 f"{holder.stderr.read().strip()}")
            m = d.settle()
            scrapes = []
            for _ in range(3):
                start = time.monotonic()
                get(d.url + "/metrics", timeout=30)
                scrapes.append(time.monotonic() - start)
            rss = status_mb(d.proc.pid, "VmRSS")
            tracked = sum_samples(m, "tcpstate_sockets_tracked")
            d.stop()
            # A daemon started while they are open reads them all from the kernel before it is ready.
            d2 = Daemon(self.workdir, self.daemon_flags)
            d2.stop()
            return Hold(count, rss, max(scrapes), tracked, d2.ready_s)
        finally:
            d.stop()
            if holder is not None:
                holder.stdin.close()
                try:
                    holder.wait(60)
                except subprocess.TimeoutExpired:
                    holder.kill()

    def soak(self, seconds: float, interval_s: float = 30.0) -> Soak:
        """Churn for `seconds` with the daemon running; its RSS after every interval."""
        self.ns.renew()
        d = Daemon(self.workdir, self.daemon_flags)
        result = Soak(seconds, 0)
        try:
            before = d.metrics()
            lost_so_far = lost_by_reason(before)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                load = self.churn(min(interval_s, max(1.0, end - time.monotonic())))
                result.connections += load["connections"]
                result.rss_mb.append(status_mb(d.proc.pid, "VmRSS"))
                lost = lost_by_reason(d.metrics())
                new = {reason: n - lost_so_far.get(reason, 0) for reason, n in lost.items()
                       if n > lost_so_far.get(reason, 0)}
                result.lost_by_interval.append(sum(new.values()))
                lost_so_far = lost
                self.log(f"  soak: {result.connections:,} connections, RSS {result.rss_mb[-1]:.0f} MB, "
                         f"{result.lost_by_interval[-1]:,} events lost"
                         + "".join(f", {n:,} {reason}" for reason, n in sorted(new.items())))
            after = d.settle()
            result.lost = sum_samples(after, "tcpstate_events_lost_total") - sum_samples(before, "tcpstate_events_lost_total")
            result.timeline_written = int(sum_samples(after, "tcpstate_timeline_records_written_total")
                                          - sum_samples(before, "tcpstate_timeline_records_written_total"))
            result.timeline_dropped = int(
                sum_samples(after, 'tcpstate_timeline_records_lost_total{reason="dropped"}')
                - sum_samples(before, 'tcpstate_timeline_records_lost_total{reason="dropped"}'))
        finally:
            d.stop()
        return result
