"""Time, injected: the kernel stamps events with CLOCK_MONOTONIC, and so does this.

Intervals and ages are monotonic nanoseconds, on the kernel's basis; Unix time is
only for what people and the store read (when something was written, what the
timeline's retention keeps). Code off the event path takes both from a Clock, so
its tests move time by hand instead of patching the time module.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic_ns(self) -> int: ...

    def wall(self, monotonic_ns: int) -> float:
        """Unix seconds for a monotonic timestamp."""
        ...

    def offset_ns(self) -> int:
        """Unix nanoseconds minus monotonic ones: wall(t) == (t + offset_ns()) / 1e9."""
        ...

    def now(self) -> float:
        """Unix seconds now."""
        ...


class SystemClock:
    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall(self, monotonic_ns: int) -> float:
        return (monotonic_ns + self._offset_ns) / 1e9

    def offset_ns(self) -> int:
        return self._offset_ns

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock the test moves by hand; wall time starts at ``wall_start``."""

    def __init__(self, start_ns: int = 0, wall_start: float = 1_700_000_000.0) -> None:
        self.now_ns = start_ns
        self._start_ns = start_ns
        self._wall_start = wall_start

    def monotonic_ns(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)

    def wall(self, monotonic_ns: int) -> float:
        return self._wall_start + (monotonic_ns - self._start_ns) / 1e9

    def offset_ns(self) -> int:
        return round(self._wall_start * 1e9) - self._start_ns

    def now(self) -> float:
        return self.wall(self.now_ns)
