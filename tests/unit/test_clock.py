"""The injected clock: monotonic time on the kernel's basis, Unix time beside it."""

from __future__ import annotations

import time

from tracer.core.clock import FakeClock, SystemClock


def test_a_fake_clock_moves_both_times_together():
    clock = FakeClock(start_ns=5_000_000_000, wall_start=1_700_000_000.0)
    assert clock.now() == 1_700_000_000.0
    clock.advance(2.5)
    assert clock.monotonic_ns() == 7_500_000_000
    assert clock.now() == 1_700_000_002.5 == clock.wall(clock.monotonic_ns())
    assert clock.wall(clock.monotonic_ns()) == (clock.monotonic_ns() + clock.offset_ns()) / 1e9


def test_the_system_clock_is_the_kernels_monotonic_clock_and_unix_time():
    clock = SystemClock()
    before = time.monotonic_ns()
    assert before <= clock.monotonic_ns() <= time.monotonic_ns()
    assert abs(clock.now() - time.time()) < 1.0
    assert abs(clock.wall(clock.monotonic_ns()) - clock.now()) < 1.0
