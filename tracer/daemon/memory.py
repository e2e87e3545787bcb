"""What the daemon does about its own memory: the collector's thresholds, and the C heap."""

from __future__ import annotations

import ctypes
import gc

# Young objects the cyclic garbage collector lets pile up before it looks at them.
# Python's default (700) has it walk the young objects every few hundred events at
# full churn, which costs as much as decoding and applying them (tests/bench/pipeline.py
# measures both). The tracker's objects form no cycles; reference counting frees them.
GC_THRESHOLD = (100_000, 20, 20)

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc only
except AttributeError:
    _malloc_trim = None


def release_free_memory() -> None:
    """Hands the C heap's free memory back to the kernel (glibc keeps it otherwise):
    a burst's temporary lists would stay in the RSS for good."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def tune_gc() -> None:
    """Keeps what start-up made (bcc, Flask, the baseline) out of every collection
    and lets the young generation grow to GC_THRESHOLD."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
