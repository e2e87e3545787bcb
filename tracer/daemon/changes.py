"""When the timeline last changed: what the page's live stream (tracer/web/stream.py) watches."""

from __future__ import annotations


class TimelineChanges:
    """A version that grows with every write to the timeline, and the Unix time of
    the latest. The flusher writes it, web threads read it; ``written_at`` is set
    before ``version`` grows, so a reader that sees a new version sees its time."""

    def __init__(self) -> None:
        self.version = 0
        self.written_at = 0.0

    def changed(self, at: float) -> None:
        self.written_at = at
        self.version += 1
