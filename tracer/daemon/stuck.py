"""The stuck-socket scan: the detector's latest report, for the API and the metrics."""

from __future__ import annotations

from tracer.core.clock import Clock
from tracer.core.detector import Report
from tracer.core.tracker import Tracker


class StuckScanner:
    """Keeps the latest Report of the tracker's scan (tracer/web/api.py StuckReports).

    The first scan runs when the scanner is made, so the web has a report to serve
    before the housekeeping thread's first round. The report is replaced whole, so
    a reader in another thread sees one scan or the next, never a mix.
    """

    def __init__(self, tracker: Tracker, clock: Clock) -> None:
        self.tracker = tracker
        self.clock = clock
        self.report: Report = tracker.scan(clock.monotonic_ns())

    def scan(self) -> Report:
        self.report = self.tracker.scan(self.clock.monotonic_ns())
        return self.report
