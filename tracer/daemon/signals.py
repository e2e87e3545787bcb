"""Stopping on SIGTERM and SIGINT, with handlers that take no lock.

A handler that calls threading.Event.set() can deadlock the process: a second
signal that arrives while the first handler holds the Event's lock runs the
handler again, in the same thread, on the same lock (seen here: Ctrl-C, then the
SIGTERM of `timeout`). Setting an attribute is all a handler does here.
"""

from __future__ import annotations

import signal
from types import FrameType


class StopSignals:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    @property
    def stopping(self) -> bool:
        return self.received is not None


class ReloadSignal:
    """SIGHUP: a flag the daemon's main loop takes (``take()``), as StopSignals does."""

    def __init__(self, sig: int = signal.SIGHUP) -> None:
        self.pending = False
        signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True

    def take(self) -> bool:
        pending, self.pending = self.pending, False
        return pending
