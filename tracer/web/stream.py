"""GET /api/v1/stream: server-sent events telling the page that sockets changed.

Each viewer holds a server thread for as long as it watches, so viewers are capped
(a 503 past the cap) and every stream ends after a while (browsers reconnect on
their own): scrapes and API calls are never starved.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Protocol

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("stream", __name__, url_prefix="/api/v1")

STREAM_SECONDS = 300
KEEPALIVE_SECONDS = 15


class TimelineChanges(Protocol):
    """When the timeline last changed (the daemon's TimelineChanges, tracer/daemon/changes.py)."""

    @property
    def version(self) -> int:
        """Grows whenever the timeline was written."""
        ...

    @property
    def written_at(self) -> float:
        """Unix time of the latest write."""
        ...


class Viewers:
    """The live streams: at most ``limit`` at once, and all ended by close() (the
    server's stop waits for its workers, and a stream would hold one for minutes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self.closing = threading.Event()

    def enter(self) -> bool:
        return not self.closing.is_set() and self._slots.acquire(blocking=False)

    def close(self) -> None:
        self.closing.set()

    def leave(self) -> None:
        self._slots.release()


@bp.get("/stream")
def stream():
    changes: TimelineChanges = current_app.config["CHANGES"]
    viewers: Viewers = current_app.config["VIEWERS"]
    interval = current_app.config.get("STREAM_INTERVAL", 1.0)
    if not viewers.enter():
        return jsonify(error=f"too many live viewers (at most {viewers.limit}); reload later or "
                             "watch without live updates", status=503), 503

    def events():
        try:
            seen = changes.version
            yield "retry: 5000\n\n"
            started = quiet = time.monotonic()
            while time.monotonic() - started < STREAM_SECONDS:
                if viewers.closing.wait(interval):
                    return
                if changes.version != seen:
                    seen = changes.version
                    quiet = time.monotonic()
                    yield f"event: changed\ndata: {json.dumps({'at': changes.written_at})}\n\n"
                elif time.monotonic() - quiet > KEEPALIVE_SECONDS:
                    quiet = time.monotonic()
                    yield ": keepalive\n\n"
        finally:
            viewers.leave()

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
