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

        app.config["STORE"] = store
        app.register_blueprint(sockets_bp.bp)
    # The timeline page (tracer/web/timeline.py) and its live stream (stream.py) are
    # registered once the store and /api/v1/sockets they read from exist.

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):  # API clients get JSON, never an HTML page
        return jsonify(error=exc.description, status=exc.code), exc.code

    return app
