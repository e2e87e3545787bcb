"""The web side: /metrics, health probes, the JSON API (and later the timeline UI).

``create_app`` is a factory: the daemon passes in what the pages read (a
registry, a health object); tests pass their own.
"""

from __future__ import annotations

from typing import Protocol

from flask import Flask, jsonify
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException


class Health(Protocol):
    def alive(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


def create_app(registry: CollectorRegistry, health: Health, stuck: object, clock: object,
               store: object | None = None) -> Flask:
    """``stuck`` has the detector's latest ``report``; ``clock`` turns kernel time into Unix time;
    ``store`` (a tracer.store.LifecycleStore) serves /api/v1/sockets when given."""
    app = Flask(__name__, static_folder=None)  # the timeline serves its own assets
    app.config["REGISTRY"] = registry
    app.config["HEALTH"] = health
    app.config["STUCK"] = stuck
    app.config["CLOCK"] = clock


    from tracer.web import api as api_bp
    from tracer.web import health as health_bp
    from tracer.web import metrics as metrics_bp

    app.register_blueprint(metrics_bp.bp)
    app.register_blueprint(health_bp.bp)
    app.register_blueprint(api_bp.bp)
    if store is not None:
        from tracer.web import sockets_api as sockets_bp
        from tracer.web import stream as stream_bp
        from tracer.web import timeline as timeline_bp

        app.config["STORE"] = store
        app.config["CHANGES"] = stuck  # the housekeeper also says when the timeline changed
        app.config["VIEWERS"] = stream_bp.Viewers(8)
        app.register_blueprint(sockets_bp.bp)
        app.register_blueprint(stream_bp.bp)
        app.register_blueprint(timeline_bp.bp)

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):  # API clients get JSON, never an HTML page
        return jsonify(error=exc.description, status=exc.code), exc.code

    return app
