"""`tcpstate-tracer bench`: loopback churn with nothing attached, with the daemon, and
with bcc's tcpstates, in alternating runs, and what each kept of it.

The load is tracer/bench/loadgen.c (built here with gcc), run in a network
namespace the bench makes and deletes: its TIME_WAITs, ports and counters are its
own, and nothing leaves the namespace's loopback. Each connection is 10 transitions
(5 a side) and each listener 2, so the generated count is known exactly; the
daemon's kernel counters, the events its core received and the transitions its
timeline stored are compared against it; tcpstates' printed lines likewise.

Figures per setup are the median over the rounds. CPU seconds are the tracer's
own (all threads), from the start of the load until it has taken in the last event.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOADGEN_SRC = Path(__file__).resolve().parent / "loadgen.c"  # package data: works from an installed package
TCPSTATES = Path("/usr/sbin/tcpstates-bpfcc")
PORT = 1024  # the namespace's own loopback: below its ephemeral range, above what services use
TRANSITIONS_PER_CONNECTION = 10
TRANSITIONS_PER_LISTENER = 2
SETTLE_S = 120.0  # the longest a tracer may take to catch up after the load
TICK = os.sysconf("SC_CLK_TCK")
_LOST_RE = re.compile(rb"Possibly lost (\d+) samples")


class BenchError(RuntimeError):
    """Something stopped the bench (one line)."""


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


# -- processes -----------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read()


def _metrics(url: str) -> dict[str, float]:
    """Samples by their full name with labels, e.g. 'tcpstate_events_received_total'."""
    out = {}
    for line in _get(url + "/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _sum(metrics: dict[str, float], prefix: str, ports: list[int] | None = None) -> int:
    total = 0.0
    for name, value in metrics.items():
        if name.startswith(prefix + "{") or name == prefix:
            if ports is None or any(f'port="{p}"' in name for p in ports):
                total += value
    return int(total)


def _lost_by_reason(metrics: dict[str, float]) -> dict[str, int]:
    return {name.split('reason="')[1].split('"')[0]: int(value) for name, value in metrics.items()
            if name.startswith("tcpstate_events_lost_total{") and 'reason="' in name}


class Namespace:
    """A network namespace with its loopback up; deleted on exit with all it holds."""

    def __init__(self) -> None:
        self.name = f"tst-bench-{os.getpid()}"

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def renew(self) -> None:
        """An empty namespace of the same name: the sockets an earlier phase left (its
        TIME_WAITs last a minute) go with the old one."""
        self.__exit__()
        try:
            self.__enter__()
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"cannot make the bench namespace {self.name} again: "
                             f"{exc.stderr.decode(errors='replace').strip()}") from None

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> str:
        done = subprocess.run(self.cmd(*argv), capture_output=True, text=True)
        if done.returncode:
            raise BenchError(f"{' '.join(argv)} failed in the bench namespace: "
                             f"{(done.stderr or done.stdout).strip()}")
        return done.stdout


def build_loadgen(into: Path) -> Path:
    if not LOADGEN_SRC.exists():
        raise BenchError(f"{LOADGEN_SRC} is missing: the bench runs from a checkout of tcpstate-tracer")
    if shutil.which("gcc") is None:
        raise BenchError("the bench builds its load generator with gcc: install it (`make test-setup`)")
    out = into / "loadgen"
    done = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(LOADGEN_SRC)],
                          capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"building the load generator failed: {done.stderr.strip()}")
    return out


# -- the tracers ---------------------------------------------------------------


class Daemon:
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
                if _get(self.url + "/readyz", timeout=1):
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
        return _metrics(self.url)

    # Between two looks at a settled daemon, what the rest of the host (the bench's own
    # scrapes among it) still makes: fewer events and records than this.
    QUIET = 2000

    def settle(self, timeout_s: float = SETTLE_S) -> dict[str, float]:
        """Waits until the daemon has taken in every event of the load and written its
        timeline: the ring buffer drained, and received and written standing still but
        for the host's background."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            m = self.metrics()
            now = (m.get("tcpstate_events_received_total", 0), m.get("tcpstate_timeline_records_written_total", 0))
            if (last is not None and all(b - a < self.QUIET for a, b in zip(last, now))
                    and m.get("tcpstate_event_lag_seconds", 0) < 0.5):
                return m
            if time.monotonic() > deadline:
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
            cpu = _cpu_s(self.proc.pid)
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


# -- the runs ------------------------------------------------------------------


class Bench:
    def __init__(self, ns: Namespace, loadgen: Path, workdir: Path, seconds: float, threads: int,
                 daemon_flags: list[str], log=print) -> None:
        self.ns, self.loadgen, self.workdir = ns, loadgen, workdir
        self.seconds, self.threads = seconds, threads
        self.daemon_flags = daemon_flags
        self.ports = [PORT + i for i in range(threads)]
        self.log = log

    def churn(self, seconds: float | None = None) -> dict:
        out = self.ns.run(str(self.loadgen), "churn", str(PORT), str(seconds or self.seconds), str(self.threads))
        result = json.loads(out)
        if result["errors"]:
            raise BenchError(f"the load generator saw {result['errors']} failed connections")
        return result

    def _generated(self, load: dict) -> int:
        return TRANSITIONS_PER_CONNECTION * load["connections"] + TRANSITIONS_PER_LISTENER * load["threads"]

    def untraced(self) -> Run:
        load = self.churn()
        return Run("untraced", load["connections"], load["seconds"], self._generated(load))

    def daemon(self) -> Run:
        d = Daemon(self.workdir, self.daemon_flags)
        try:
            before = d.metrics()
            cpu0 = _cpu_s(d.proc.pid)
            load_start = time.time()
            load = self.churn()
            after = d.settle()
            cpu = _cpu_s(d.proc.pid) - cpu0
            peak = _status_mb(d.proc.pid, "VmHWM")
        finally:
            d.stop()
        run = Run("daemon", load["connections"], load["seconds"], self._generated(load))
        run.counted = (_sum(after, "tcpstate_transitions_total", self.ports)
                       - _sum(before, "tcpstate_transitions_total", self.ports))
        run.delivered = int(after["tcpstate_events_received_total"] - before["tcpstate_events_received_total"])
        run.lost = _sum(after, "tcpstate_events_lost_total") - _sum(before, "tcpstate_events_lost_total")
        gone = 'tcpstate_socket_corrections_total{reason="gone"}'
        run.gone = _sum(after, gone) - _sum(before, gone)
        run.stored = stored_transitions(d.db, self.ports, load_start)
        run.cpu_s, run.peak_rss_mb, run.ready_s = cpu, peak, d.ready_s
        return run

    def tcpstates(self) -> Run:
        t = Tcpstates(self.workdir)
        try:
            cpu0 = _cpu_s(t.proc.pid)
            load = self.churn()
            t.settle()
            cpu = _cpu_s(t.proc.pid) - cpu0
            peak = _status_mb(t.proc.pid, "VmHWM")
        finally:
            t.stop()
        run = Run("tcpstates", load["connections"], load["seconds"], self._generated(load))
        run.delivered = t.printed()
        run.lost = t.lost()
        run.cpu_s, run.peak_rss_mb, run.ready_s = cpu, peak, t.ready_s
        return run

    def hold(self, count: int) -> Hold:
        """The daemon with `count` established connections (2 sockets each) held open."""
        d = Daemon(self.workdir, self.daemon_flags)
        holder = None
        try:
            holder = subprocess.Popen(self.ns.cmd(str(self.loadgen), "hold", str(PORT), str(count)),
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
                _get(d.url + "/metrics", timeout=30)
                scrapes.append(time.monotonic() - start)
            rss = _status_mb(d.proc.pid, "VmRSS")
            tracked = _sum(m, "tcpstate_sockets_tracked")
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
        d = Daemon(self.workdir, self.daemon_flags)
        result = Soak(seconds, 0)
        try:
            before = d.metrics()
            lost_so_far = _lost_by_reason(before)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                load = self.churn(min(interval_s, max(1.0, end - time.monotonic())))
                result.connections += load["connections"]
                result.rss_mb.append(_status_mb(d.proc.pid, "VmRSS"))
                lost = _lost_by_reason(d.metrics())
                new = {reason: n - lost_so_far.get(reason, 0) for reason, n in lost.items()
                       if n > lost_so_far.get(reason, 0)}
                result.lost_by_interval.append(sum(new.values()))
                lost_so_far = lost
                self.log(f"  soak: {result.connections:,} connections, RSS {result.rss_mb[-1]:.0f} MB, "
                         f"{result.lost_by_interval[-1]:,} events lost"
                         + "".join(f", {n:,} {reason}" for reason, n in sorted(new.items())))
            after = d.settle()
            result.lost = _sum(after, "tcpstate_events_lost_total") - _sum(before, "tcpstate_events_lost_total")
            result.timeline_written = int(_sum(after, "tcpstate_timeline_records_written_total")
                                          - _sum(before, "tcpstate_timeline_records_written_total"))
            result.timeline_dropped = int(_sum(after, 'tcpstate_timeline_records_lost_total{reason="dropped"}')
                                          - _sum(before, 'tcpstate_timeline_records_lost_total{reason="dropped"}'))
        finally:
            d.stop()
        return result


# -- the report ----------------------------------------------------------------


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run]) -> str:
    setups = [s for s in ("untraced", "daemon", "tcpstates") if any(r.setup == s for r in runs)]
    by = {s: [r for r in runs if r.setup == s] for s in setups}
    base = _median([r.rate for r in by["untraced"]])

    def share(r: Run, value: int | None) -> str:
        if value is None:
            return "-"
        return f"{value:,} ({value / r.generated:.1%})"

    rows = [("connections/s", lambda s: _fmt(_median([r.rate for r in by[s]]))),
            ("share of untraced", lambda s: f"{_median([r.rate for r in by[s]]) / base:.1%}")]
    for label, attr in (("transitions generated", "generated"), ("counted in the kernel", "counted"),
                        ("delivered to user space (host)", "delivered"), ("stored in the timeline", "stored")):
        rows.append((label, lambda s, a=attr: "; ".join(
            _fmt(r.generated) if a == "generated" else share(r, getattr(r, a))
            for r in by[s])))
    rows += [("events reported lost", lambda s: "; ".join(_fmt(r.lost) for r in by[s])),
             ("lives found ended unseen", lambda s: "; ".join(_fmt(r.gone) for r in by[s])),
             ("tracer CPU s (load + catch-up)", lambda s: _fmt(_median([r.cpu_s for r in by[s]]), ".1f")),
             ("tracer peak RSS MB", lambda s: _fmt(_median([r.peak_rss_mb for r in by[s]]))),
             ("time to ready s", lambda s: _fmt(_median([r.ready_s for r in by[s]]), ".2f"))]
    width = max(len(r[0]) for r in rows)
    cols = [[f(s) for _, f in rows] for s in setups]
    widths = [max(len(s), *(len(c) for c in col)) for s, col in zip(setups, cols)]
    lines = ["| " + " | ".join([" " * width] + [s.ljust(w) for s, w in zip(setups, widths)]) + " |",
             "|" + "|".join(["-" * (width + 2)] + ["-" * (w + 2) for w in widths]) + "|"]
    for i, (label, _) in enumerate(rows):
        lines.append("| " + " | ".join([label.ljust(width)] + [col[i].ljust(w) for col, w in zip(cols, widths)])
                     + " |")
    return "\n".join(lines)


@dataclass
class Targets:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def met(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def targets(runs: list[Run], hold: Hold | None, soak: Soak | None) -> Targets:
    t = Targets()
    base = _median([r.rate for r in runs if r.setup == "untraced"])
    daemon = [r for r in runs if r.setup == "daemon"]
    ratio = _median([r.rate for r in daemon]) / base
    t.add("throughput >= 95% of untraced", ratio >= 0.95, f"{ratio:.1%}")
    exact = all(r.counted == r.generated and r.stored == r.generated and r.lost == 0 for r in daemon)
    t.add("nothing lost: counted = stored = generated, 0 lost", exact,
          "; ".join(f"{r.generated - (r.stored or 0):,} not stored, {r.lost:,} lost"
                    + (f", {r.gone:,} lives found ended unseen" if r.gone else "") for r in daemon))
    ready = max(r.ready_s for r in daemon)
    t.add("ready within 2 s", ready < 2, f"{ready:.2f} s at most")
    if hold:
        t.add(f"{hold.connections:,} established: RSS < 300 MB", hold.rss_mb < 300, f"{hold.rss_mb:.0f} MB")
        t.add(f"{hold.connections:,} established: scrape < 1 s", hold.scrape_s < 1, f"{hold.scrape_s:.2f} s")
    if soak and len(soak.rss_mb) >= 3:
        third = max(1, len(soak.rss_mb) // 3)
        first, last = statistics.mean(soak.rss_mb[:third]), statistics.mean(soak.rss_mb[-third:])
        t.add(f"memory flat over {soak.seconds / 60:.0f} min of churn", last <= first * 1.1,
              f"RSS {first:.0f} MB in the first third, {last:.0f} MB in the last")
    return t


BLIND_PROBE_S = 5.0


def probe_blind_spots() -> str:
    """tracer.host.blindspots: threads on top of which the kernel runs no BPF program. A
    transition processed there is missed by the daemon and by tcpstates alike, and no
    counter says so: the reason a run can miss "nothing lost" by a transition or two."""
    from tracer.host import blindspots, headers

    try:
        headers.prepare()
    except headers.HeadersError as exc:
        return f"not probed: {exc}"
    return blindspots.summary(BLIND_PROBE_S)[0]


def main(seconds: float, rounds: int, threads: int, compare: bool, hold: int, soak: float,
         json_out: Path | None, daemon_flags: list[str]) -> int:
    if os.geteuid() != 0:
        raise BenchError("the bench loads BPF programs and makes a network namespace: run it as root")
    if compare and not TCPSTATES.exists():
        raise BenchError(f"{TCPSTATES} is missing: install Debian's bpfcc-tools for --compare-tcpstates")
    setups = ["untraced", "daemon"] + (["tcpstates"] if compare else [])
    with tempfile.TemporaryDirectory(prefix="tcpstate-bench-") as tmp, Namespace() as ns:
        workdir = Path(tmp)
        bench = Bench(ns, build_loadgen(workdir), workdir, seconds, threads, daemon_flags,
                      log=lambda text: print(text, file=sys.stderr, flush=True))
        print(f"tcpstate-tracer bench: {rounds} rounds of {seconds:g} s of loopback churn, {threads} "
              f"connection(s) at a time, in namespace {ns.name}; setups alternate: {', '.join(setups)}",
              file=sys.stderr, flush=True)
        blind_spots = probe_blind_spots()
        print(f"blind spots ({BLIND_PROBE_S:g} s probe): {blind_spots}", file=sys.stderr, flush=True)
        runs: list[Run] = []
        for i in range(rounds):
            for setup in setups:
                run = getattr(bench, setup)()
                runs.append(run)
                print(f"round {i + 1}/{rounds} {setup:9}: {run.rate:,.0f} connections/s"
                      + (f", {run.lost:,} lost" if run.lost is not None else ""), file=sys.stderr, flush=True)
        print(table(runs), flush=True)  # whatever comes next, these figures are out
        held = soaked = None
        failures = []
        if hold:
            print(f"holding {hold:,} established connections open...", file=sys.stderr, flush=True)
            try:
                ns.renew()  # the churn's TIME_WAITs are not what is measured here
                held = bench.hold(hold)
            except BenchError as exc:
                failures.append((f"{hold:,} established connections held", False, str(exc)))
        if soak:
            print(f"soak: {soak:g} s of churn with the daemon...", file=sys.stderr, flush=True)
            try:
                ns.renew()
                soaked = bench.soak(soak)
            except BenchError as exc:
                failures.append((f"{soak:g} s soak", False, str(exc)))
    if held:
        print(f"\n{held.connections:,} established connections held open ({2 * held.connections:,} sockets): "
              f"daemon RSS {held.rss_mb:.0f} MB, tracking {held.tracked:,} sockets, slowest of 3 scrapes "
              f"{held.scrape_s:.2f} s; a daemon started with them open was ready in {held.ready_with_sockets_s:.2f} s")
    if soaked:
        print(f"\nsoak: {soaked.connections:,} connections in {soaked.seconds:g} s; daemon RSS every interval (MB): "
              + " ".join(f"{v:.0f}" for v in soaked.rss_mb) + f"; {soaked.lost:,} events lost; timeline: "
              f"{soaked.timeline_written:,} lives written, {soaked.timeline_dropped:,} dropped waiting for the store")
    print(f"\nthreads whose softirq work no BPF program sees ({BLIND_PROBE_S:g} s probe before the runs): "
          f"{blind_spots}")
    result = targets(runs, held, soaked)
    result.checks += failures
    print("\ntargets:")
    for name, ok, detail in result.checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}")
    if json_out:
        json_out.write_text(json.dumps({
            "runs": [asdict(r) | {"rate": r.rate} for r in runs],
            "hold": asdict(held) if held else None, "soak": asdict(soaked) if soaked else None,
            "blind_spots": blind_spots,
            "targets": [{"name": n, "met": ok, "detail": d} for n, ok, d in result.checks]}, indent=1))
    return 0 if result.met else 3
