"""The daemon's log says when the kernel's events were lost, and what that costs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tracer.core.clock import Clock

log = logging.getLogger(__name__)

LOSS_MEANING = {
    "program_not_run": "the kernel did not run the program (it was already running on that CPU); "
                       "those transitions are nowhere, and the lives they belong to are incomplete",
    "ring_buffer_full": "the ring buffer was full; counted in tcpstate_transitions_total, "
                        "missing from the model and the timeline",
}


class LossLogger:
    """A warning for each reason events were lost since the last warning for it: the
    first as soon as it is seen, then at most every ``every_s`` (a steady loss is one
    line per interval, with the count, not one per event)."""

    def __init__(self, lost: Callable[[], dict[str, int]], clock: Clock, every_s: float = 10.0) -> None:
        self.lost = lost  # the source's losses by reason, since it attached
        self.clock = clock
        self.every_ns = int(every_s * 1e9)
        self._logged: dict[str, int] = {}
        self._logged_at_ns: dict[str, int] = {}

    def log(self) -> None:
        now = self.clock.monotonic_ns()
        for reason, total in self.lost().items():
            new = total - self._logged.get(reason, 0)
            at = self._logged_at_ns.get(reason)
            if new > 0 and (at is None or now >= at + self.every_ns):
                log.warning("%d transitions lost (%s, %d since the start): %s", new, reason, total,
                            LOSS_MEANING.get(reason, "see tcpstate_events_lost_total"))
                self._logged[reason] = total
                self._logged_at_ns[reason] = now
