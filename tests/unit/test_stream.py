"""Live updates for the page: an event when the timeline changed, and a cap on viewers."""

from __future__ import annotations

from types import SimpleNamespace

from flask import Flask
from prometheus_client import CollectorRegistry

from tests.conftest import Healthy
from tracer.core.clock import FakeClock
from tracer.daemon.changes import TimelineChanges
from tracer.web import create_app, stream


def app_with(changes, limit: int) -> Flask:
    app = Flask(__name__)
    app.config.update(CHANGES=changes, VIEWERS=stream.Viewers(limit), STREAM_INTERVAL=0.01)
    app.register_blueprint(stream.bp)
    return app


def test_a_change_is_announced_and_viewers_are_capped():
    changes = TimelineChanges()
    app = app_with(changes, limit=1)
    client = app.test_client()
    first = client.get("/api/v1/stream", buffered=False)
    assert first.status_code == 200 and first.mimetype == "text/event-stream"
    chunks = first.response
    assert next(chunks).startswith(b"retry:")
    second = client.get("/api/v1/stream")
    assert second.status_code == 503 and "too many live viewers" in second.get_json()["error"]
    changes.changed(123.5)
    assert next(chunks) == b'event: changed\ndata: {"at": 123.5}\n\n'
    first.close()
    third = client.get("/api/v1/stream", buffered=False)
    assert third.status_code == 200, "the slot is free again once a viewer leaves"
    third.close()


def test_the_stream_is_served_only_with_a_change_feed():
    """Without one the page polls (it takes a 404 for "no live updates")."""
    stuck = SimpleNamespace(report=None)
    without = create_app(CollectorRegistry(), Healthy(), stuck, FakeClock()).test_client()
    assert without.get("/api/v1/stream").status_code == 404
    app = create_app(CollectorRegistry(), Healthy(), stuck, FakeClock(), changes=TimelineChanges())
    app.config["STREAM_INTERVAL"] = 0.01
    response = app.test_client().get("/api/v1/stream", buffered=False)
    assert response.status_code == 200 and next(response.response).startswith(b"retry:")
    response.close()
