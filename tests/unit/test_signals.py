"""Stopping on signals must survive a second signal arriving inside the first one's handling."""

from __future__ import annotations

import os
import signal

from tracer.daemon.signals import StopSignals


def test_signals_only_set_a_flag_even_when_they_nest():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopSignals()
        assert not stop.stopping
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.stopping and stop.received == signal.SIGTERM
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
