"""The housekeeping thread's schedule (daemon.housekeeper.Housekeeper): which part runs
in which round, in which order, on a clock the test moves."""

from __future__ import annotations

import time

from tracer.core.clock import FakeClock
from tracer.daemon.housekeeper import Housekeeper


class Parts:
    """Stand-ins for the parts that write down what ran."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[str] = []
        self.interval = 10.0
        self.clock = clock
        self.read_at: int | None = None

    # the reconciler
    def reconcile(self) -> tuple[int, int]:
        self.calls.append("reconcile")
        self.read_at = self.clock.monotonic_ns() if self.clock else 0
        return 0, 0

    def due_ns(self) -> int:
        return 0 if self.read_at is None else self.read_at + int(self.interval * 1e9)

    # the scanner, the loss logger, the flusher
    def scan(self) -> None:
        self.calls.append("scan")

    def log(self) -> None:
        self.calls.append("losses")

    def flush(self, final: bool = False) -> int:
        self.calls.append("final flush" if final else "flush")
        return 0

    def retain(self) -> int:
        self.calls.append("retain")
        return 0

    def taken(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def test_each_part_runs_on_its_interval_in_the_days_order():
    clock = FakeClock()
    parts = Parts(clock)
    hk = Housekeeper(clock, parts, parts, parts, parts, scan_s=1.0, retain_every_s=10.0)
    hk.round()
    assert parts.taken() == ["reconcile", "scan", "losses", "flush", "retain"]
    for _ in range(9):
        clock.advance(1.0)
        hk.round()
        assert parts.taken() == ["scan", "losses", "flush"]
    clock.advance(1.0)
    hk.round()
    assert parts.taken() == ["reconcile", "scan", "losses", "flush", "retain"]


def test_a_slow_table_read_puts_the_next_one_off():
    clock = FakeClock()
    parts = Parts(clock)
    hk = Housekeeper(clock, parts, parts, parts, parts)
    parts.interval = 30.0  # ten times a 3 s read
    hk.round()
    assert "reconcile" in parts.taken()
    reconciles = []
    for second in range(1, 61):
        clock.advance(1.0)
        hk.round()
        if "reconcile" in parts.taken():
            reconciles.append(second)
    assert reconciles == [30, 60]


def test_without_a_timeline_nothing_is_written_or_retained():
    clock, parts = FakeClock(), Parts()
    hk = Housekeeper(clock, parts, parts, parts, None)
    hk.round()
    assert parts.taken() == ["reconcile", "scan", "losses"]


def test_the_thread_runs_rounds_and_writes_everything_when_it_stops():
    parts = Parts()
    hk = Housekeeper(FakeClock(), parts, parts, parts, parts, scan_s=0.01)
    hk.start()
    deadline = time.monotonic() + 5
    while parts.calls.count("scan") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    hk.stop()
    assert parts.calls.count("scan") >= 2
    assert parts.calls[-1] == "final flush"
