"""Everything a tracker holds, for tests that apply the same events two ways and
compare what each leaves."""

from __future__ import annotations

from tracer.core.tracker import Tracker


def tracker_state(tracker: Tracker, lives_in_order: bool = True) -> dict:
    """After every TIME_WAIT has ended. ``lives_in_order`` False compares the drained
    lives without their ids and order (two ways that apply lives in another order)."""
    tracker.expire(10**13)
    lives = tracker.drain_raw()
    return {
        "counts": tracker.counts,
        "durations": {k: (h.counts, h.sum_ns) for k, h in tracker.outcome.state_durations.items()},
        "connections": {k: (h.counts, h.sum_ns) for k, h in tracker.outcome.connection_durations.items()},
        "failures": tracker.outcome.connect_failures,
        "closes": tracker.outcome.closes,
        "timewait": tracker.outcome.timewait_entered_by_port,
        "stuck": tracker.outcome.stuck_total,
        "sockets": sorted(tracker.table.sockets),
        "stats": tracker.stats(),
        "lives": lives if lives_in_order else sorted(life[1:] for life in lives),
    }
