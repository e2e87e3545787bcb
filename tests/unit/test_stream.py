"""Live updates for the page: an event when the timeline changed, and a cap on viewers."""

from __future__ import annotations

from types import SimpleNamespace

from flask import Flask

from tracer.web import stream


def app_with(changes, limit: int) -> Flask:
    app = Flask(__name__)
    app.config.update(CHANGES=changes, VIEWERS=stream.Viewers(limit), STREAM_INTERVAL=0.01)
    app.register_blueprint(stream.bp)
    return app


def test_a_change_is_announced_and_viewers_are_capped():
    changes = SimpleNamespace(timeline_version=0, timeline_written_at=0.0)
    app = app_with(changes, limit=1)
    client = app.test_client()
    first = client.get("/api/v1/stream", buffered=False)
    assert first.status_code == 200 and first.mimetype == "text/event-stream"
    chunks = first.response
    assert next(chunks).startswith(b"retry:")
    second = client.get("/api/v1/stream")
    assert second.status_code == 503 and "too many live viewers" in second.get_json()["error"]
    changes.timeline_version, changes.timeline_written_at = 1, 123.5
    assert next(chunks) == b'event: changed\ndata: {"at": 123.5}\n\n'
    first.close()
    third = client.get("/api/v1/stream", buffered=False)
    assert third.status_code == 200, "the slot is free again once a viewer leaves"
    third.close()
