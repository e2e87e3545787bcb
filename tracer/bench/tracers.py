"""The tracers the bench measures, as processes: the daemon (`tcpstate-tracer run`)
and bcc's tcpstates; what their /proc, /metrics and timeline say about a run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tracer.bench.errors import BenchError

TCPSTATES = Path("/usr/sbin/tcpstates-bpfcc")
SETTLE_S = 120.0  # the longest a tracer may take to catch up after the load
TICK = os.sysconf("SC_CLK_TCK")
_LOST_RE = re.compile(rb"Possibly lost (\d+) samples")


# -- what a process and its /metrics say ---------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def status_mb(pid: int, key: str) -> float:
    """A size from /proc/PID/status (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read()


def scrape(url: str) -> dict[str, float]:
    """Samples by their full name with labels, e.g. 'tcpstate_events_received_total'."""
    out = {}
    for line in get(url + "/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def sum_samples(metrics: dict[str, float], prefix: str, ports: list[int] | None = None) -> int:
    """The sum of a metric's samples (every label set, or those of ``ports``)."""
    total = 0.0
    for name, value in metrics.items():
        if name.startswith(prefix + "{") or name == prefix:
            if ports is None or any(f'port="{p}"' in name for p in ports):
                total += value
    return int(total)


def lost_by_reason(metrics: dict[str, float]) -> dict[str, int]:
    return {name.split('reason="')[1].split('"')[0]: int(value) for name, value in metrics.items()
            if name.startswith("tcpstate_events_lost_total{") and 'reason="' in name}


def stored_transitions(db: Path, ports: list[int], since: float) -> int:
    """Transitions in the timeline for these service ports, of sockets born at or after
    ``since`` (Unix seconds; the TIME_WAITs of earlier runs, which the daemon finds in
    the kernel's table, are not this run's): one per span (each began with one), and
    one more for a life that ended in CLOSE (a TIME_WAIT's end is its timer, not a
    transition)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        total = 0
        marks = ",".join("?" * len(ports))
        for spans, alive in conn.execute(
                f"SELECT spans, open FROM lifecycles WHERE service_port IN ({marks}) AND started >= ?",
                [*ports, since]):
            spans = json.loads(spans)
            total += len(spans) + (0 if alive or spans[-1][0] == "TIME_WAIT" else 1)
        return total
    finally:
        conn.close()


# -- the tracers ---------------------------------------------------------------


class Daemon:
    """`tcpstate-tracer run` on a free loopback port with a timeline of its own, ready."""

    def __init__(self, workdir: Path, extra: list[str]) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.db = workdir / "timeline.db"
        for leftover in workdir.glob("timeline.db*"):
            leftover.unlink()
        self.log = workdir / "daemon.log"
        started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tracer", "run", "--web.listen-address", self.url[7:], "--db",
                 str(self.db), *extra], stdout=out, stderr=subprocess.STDOUT)
        deadline = started + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"the daemon exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                if get(self.url + "/readyz", timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the daemon was not ready within 60 s: {self._log_tail()}")
            time.sleep(0.02)
        self.ready_s = time.monotonic() - started

    def _log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    # Between two looks at a settled daemon, what the rest of the host (the bench's own
    # scrapes among it) still makes: fewer events and records than this.
    QUIET = 2000

    def settle(self, timeout_s: float = SETTLE_S) -> dict[str, float]:
        """Waits until the daemon has taken in every event of the load and written its
        timeline: the ring buffer drained, and received and written standing still but
        for the host's background."""
        deadline = time.monotonic() + timeout_s
        last, quiet = None, 0
        while True:
            m = self.metrics()
            now = (m.get("tcpstate_events_received_total", 0), m.get("tcpstate_timeline_records_written_total", 0))
            still = last is not None and all(b - a < self.QUIET for a, b in zip(last, now))
            quiet = quiet + 1 if still and m.get("tcpstate_event_lag_seconds", 0) < 0.5 else 0
            # Two quiet polls in a row: a read of the kernel's table after a load (a full
            # TIME_WAIT table takes a second or two) holds the timeline's writes up meanwhile.
            if quiet >= 2 or time.monotonic() > deadline:
                return m
            last = now
            time.sleep(1.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Tcpstates:
    """bcc's tcpstates as its users run it, printing every transition (CSV, to a file)."""

    def __init__(self, workdir: Path) -> None:
        self.out, self.err = workdir / "tcpstates.csv", workdir / "tcpstates.err"
        # BCC compiles it against kernel headers; given the same tree the daemon uses.
        from tracer.host import headers

        try:
            headers.prepare()
        except headers.HeadersError as exc:
            raise BenchError(f"no kernel headers for tcpstates: {exc}") from None
        started = time.monotonic()
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(["/usr/bin/python3", str(TCPSTATES), "-s"], stdout=out, stderr=err)
        # Ready once it holds its tracepoint and both perf buffers (one event fd each per CPU).
        want = 1 + 2 * os.cpu_count()
        deadline = started + 60
        while self._perf_fds() < want:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"tcpstates did not start: {self.err.read_text(errors='replace').strip()}")
            time.sleep(0.02)
        self.ready_s = time.monotonic() - started

    def _perf_fds(self) -> int:
        n = 0
        try:
            for fd in os.scandir(f"/proc/{self.proc.pid}/fd"):
                try:
                    if "perf_event" in os.readlink(fd.path):
                        n += 1
                except OSError:
                    pass
        except OSError:
            pass
        return n

    def settle(self, timeout_s: float = SETTLE_S) -> None:
        """Waits until its CPU time stops growing: it has printed all it will."""
        deadline = time.monotonic() + timeout_s
        last = -1.0
        while time.monotonic() < deadline:
            cpu = cpu_s(self.proc.pid)
            if cpu - last < 0.02:
                return
            last = cpu
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # it flushes its output on the way out
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def printed(self) -> int:
        """Transitions it printed (the whole host's, as the daemon's received count)."""
        with open(self.out, "rb") as f:
            return sum(1 for _ in f) - 1  # the header

    def lost(self) -> int:
        return sum(int(m) for m in _LOST_RE.findall(self.err.read_bytes()))
