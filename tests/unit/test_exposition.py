"""/metrics for replayed recordings, byte for byte as recorded in tests/fixtures/*.metrics.txt.

The golden files pin the exposition (every family, series, value, HELP text and their
order) for a fixed input, so a change to the collector that changes what a scraper
reads shows up here as a diff. Each scenario replays a recording through the objects
the daemon uses (ReplaySource -> Tracker, the writer's expiry and the housekeeper's
scan on a FakeClock) into the collector, with fixed limits and build info; the daemon's
time-dependent values are fixed too (the scrape's duration is measured on a clock
that stands still).

A change meant to alter /metrics regenerates them, in a commit that says so:
    .venv/bin/python tests/unit/test_exposition.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tracer.core import record
from tracer.core.clock import FakeClock
from tracer.core.detector import Report, Rules
from tracer.core.ports import PortLabels
from tracer.core.states import EventKind, Role, TcpState
from tracer.core.tracker import Tracker
from tracer.metrics import HealthFamilies, KernelFamilies, TableFamilies, TcpStateCollector
from tracer.sources.bcc import KernelStats
from tracer.sources.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
RECORDING = FIXTURES / "loopback-3-client-close.jsonl"
EPHEMERAL = range(32768, 61000)
LIMITS = {"tcp_max_tw_buckets": 131072, "ephemeral_ports": len(EPHEMERAL)}
TIMEWAIT_S = 60
MSL_S = 30


@dataclass
class StoreStats:
    rows: int
    bytes: int

    def stats(self) -> dict[str, int]:
        return {"rows": self.rows, "bytes": self.bytes}


@dataclass
class Housekeeping:
    """What the daemon's housekeeper shows the collector, fixed."""

    report: Report
    last_read_s: float = 0.0
    failures: int = 0
    store: StoreStats | None = None
    written: int = 0
    not_written: int = 0


@dataclass
class PipelineLag:
    lag_s: float
    records_failed: int = 0


class WithKernelStats:
    """A replay with the live source's own counters (fixed): the kernel program's maps
    and statistics, decode errors and BCC's version, so their families are pinned too."""

    bcc_version = "0.26.0"

    def __init__(self, replay: ReplaySource) -> None:
        self._replay = replay

    def read(self, timeout_s: float = 0.0):
        return self._replay.read(timeout_s)

    def transition_counts(self):
        return self._replay.transition_counts()

    def lost(self) -> dict[str, int]:
        return {"ring_buffer_full": 3, "program_not_run": 2}

    def kernel_stats(self) -> KernelStats:
        return KernelStats(events=31, ringbuf_full=3, counts_full=0, socks_full=1, lives_full=4, lives_stale=2,
                           counters=12,
                           counters_capacity=16384, socks_capacity=524288, lives_capacity=65536)

    def decode_errors(self) -> int:
        return 1

    def close(self) -> None:
        self._replay.close()


def folding_lines() -> list[str]:
    """A recording made up here (record.to_json lines): connections to three listening
    ports and to an ephemeral one nobody listens on, a connect() refused by a reset and
    a reset sent by a server: with max_ports 2, two ports are folded into "other"."""
    S, lo, comm = TcpState, bytes([127, 0, 0, 1]) + bytes(12), b"golden".ljust(16, b"\0")
    events: list[tuple] = []

    def ev(sk, role, old, new, sport, dport, port, kind=EventKind.STATE):
        ts = 1_000_000_000 + 1_000 * len(events)
        events.append((ts, sk, lo, lo, 4242, sport, dport, port, record.AF_INET, kind, old, new, role, 0, comm))

    for n, (port, listen) in enumerate([(8080, True), (9090, True), (7070, True), (45000, False)]):
        client, server, listener, cport = 0x10000 + 3 * n, 0x10001 + 3 * n, 0x10002 + 3 * n, 40000 + n
        if listen:
            ev(listener, Role.LISTENER, S.CLOSE, S.LISTEN, port, 0, port)
        ev(client, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, port, port)
        ev(client, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, cport, port, port)
        ev(server, Role.PASSIVE, S.LISTEN, S.SYN_RECV, port, cport, port)
        ev(server, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED, port, cport, port)
        if port == 9090:  # the server aborts: a reset sent, both ends closed at once
            ev(server, Role.PASSIVE, 0, 0, port, cport, port, kind=EventKind.RESET_TX)
            ev(server, Role.PASSIVE, S.ESTABLISHED, S.CLOSE, port, cport, port)
            ev(client, Role.ACTIVE, 0, 0, cport, port, port, kind=EventKind.RESET_RX)
            ev(client, Role.ACTIVE, S.ESTABLISHED, S.CLOSE, cport, port, port)
            continue
        ev(client, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, cport, port, port)
        ev(server, Role.PASSIVE, S.ESTABLISHED, S.CLOSE_WAIT, port, cport, port)
        ev(client, Role.ACTIVE, S.FIN_WAIT1, S.FIN_WAIT2, cport, port, port)
        ev(client, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, cport, port, port)
    ev(0x20000, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, 9999, 9999)
    ev(0x20000, Role.ACTIVE, 0, 0, 40100, 9999, 9999, kind=EventKind.RESET_RX)
    ev(0x20000, Role.ACTIVE, S.SYN_SENT, S.CLOSE, 40100, 9999, 9999)
    return [json.dumps(record.to_json(e)) + "\n" for e in events]


@dataclass(frozen=True)
class Scenario:
    name: str  # the golden file is tests/fixtures/<name>.metrics.txt
    says: str  # its first line, after "# "
    lines: Callable[[], list[str]] | None = None  # the recording, made up here; else RECORDING
    max_ports: int = 100
    drop_last: tuple[str, str] | None = None  # (oldstate, newstate): the recording without its last such event
    after_s: float = 0.0  # the clock this long past the last event when the writer expires and the scan runs
    kernel_stats: bool = False
    housekeeping: dict | None = None  # Housekeeping fields besides the report
    lag_s: float = 0.0

    @property
    def golden(self) -> Path:
        return FIXTURES / f"{self.name}.metrics.txt"


SCENARIOS = [
    Scenario(
        "loopback-3-client-close",
        "tests/unit/test_exposition.py: /metrics right after replaying tests/fixtures/"
        "loopback-3-client-close.jsonl (3 TIME_WAIT modelled, nothing stuck)"),
    Scenario(
        "loopback-3-last-ack-stuck",
        "tests/unit/test_exposition.py: /metrics 61 s after replaying tests/fixtures/"
        "loopback-3-client-close.jsonl without its last LAST_ACK -> CLOSE (TIME_WAIT expired, one "
        "LAST_ACK stuck), with fixed kernel statistics, timeline and housekeeping figures",
        drop_last=("LAST_ACK", "CLOSE"), after_s=61.0, kernel_stats=True, lag_s=0.004,
        housekeeping={"last_read_s": 0.25, "failures": 1, "store": StoreStats(9, 81920),
                      "written": 7, "not_written": 2}),
    Scenario(
        "ports-folded",
        "tests/unit/test_exposition.py: /metrics with max_ports 2 after replaying made-up connections "
        "to ports 8080, 9090 (reset), 7070 and ephemeral 45000, and a refused connect() to 9999 "
        "(folding_lines())", lines=folding_lines, max_ports=2, after_s=1.0),
]


@contextmanager
def recording(scenario: Scenario) -> Iterator[Path]:
    """The scenario's recording: the fixture, a copy of it without one event, or one made up."""
    if scenario.lines is None and scenario.drop_last is None:
        yield RECORDING
        return
    lines = scenario.lines() if scenario.lines else RECORDING.read_text().splitlines(keepends=True)
    if scenario.drop_last is not None:
        old, new = scenario.drop_last
        last = max(i for i, line in enumerate(lines)
                   if (obj := json.loads(line)).get("oldstate") == old and obj.get("newstate") == new)
        lines = lines[:last] + lines[last + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RECORDING.name
        path.write_text("".join(lines))
        yield path


def exposition(scenario: Scenario, scrapes: int = 1) -> bytes:
    """The golden file's content: its first line, then what the last of ``scrapes`` returns."""
    with recording(scenario) as path:
        replay = ReplaySource(path)
        source = WithKernelStats(replay) if scenario.kernel_stats else replay
        try:
            tracker = Tracker(TIMEWAIT_S * 10**9, 10_000, Rules.build(MSL_S))
            last_ns = 0
            while (batch := source.read(0.0)) is not None:
                tracker.apply_batch(batch)
                last_ns = batch[-1][0]
            clock = FakeClock(start_ns=last_ns)
            clock.advance(scenario.after_s)
            tracker.expire(clock.monotonic_ns())  # as the writer does after every batch
            housekeeping = Housekeeping(tracker.scan(clock.monotonic_ns()), **(scenario.housekeeping or {}))
            labels = PortLabels(scenario.max_ports, EPHEMERAL)
            build = {"version": "0.1.0", "kernel": "6.1.0-golden", "bcc": source.bcc_version}  # not this machine's
            collector = TcpStateCollector(
                KernelFamilies(source, labels), TableFamilies(tracker, labels, stuck=housekeeping),
                HealthFamilies(labels, LIMITS, build, lag=PipelineLag(scenario.lag_s), kernel_table=housekeeping,
                               timeline=housekeeping, store=housekeeping.store),
                labels, timer=lambda: 0.0)
            registry = CollectorRegistry()
            registry.register(collector)
            for _ in range(scrapes - 1):
                generate_latest(registry)
            return f"# {scenario.says}\n".encode() + generate_latest(registry)
        finally:
            source.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_exposition_matches_the_golden_file(scenario: Scenario):
    assert scenario.golden.exists(), f"{scenario.golden} is missing: run {Path(__file__).relative_to(ROOT)}"
    expected = scenario.golden.read_bytes()
    got = exposition(scenario)
    # Compared whole; the assertion shows the lines that differ.
    assert got.decode().splitlines() == expected.decode().splitlines()
    assert got == expected


def test_a_second_scrape_shows_the_same():
    # Nothing accumulates in the collector, and a port keeps its label.
    for scenario in SCENARIOS:
        assert exposition(scenario, scrapes=2) == scenario.golden.read_bytes(), scenario.name


def main() -> int:
    for scenario in SCENARIOS:
        scenario.golden.write_bytes(exposition(scenario))
        print(f"wrote {scenario.golden.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
