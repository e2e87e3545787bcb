"""The web side: /metrics, health probes, the JSON API and the timeline.

``create_app`` is a factory: the daemon passes in what the pages read, each typed
by the Protocol of the page that reads it; tests pass their own.
"""

from __future__ import annotations

from flask import Flask, jsonify
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException

from tracer.core.clock import Clock
from tracer.store import LifecycleStore
from tracer.web.api import StuckReports
from tracer.web.conflicts_api import ConflictFeed
from tracer.web.health import Health
from tracer.web.stream import TimelineChanges

__all__ = ["ConflictFeed", "Health", "StuckReports", "TimelineChanges", "create_app"]


def create_app(registry: CollectorRegistry, health: Health, stuck: StuckReports, clock: Clock,
               store: LifecycleStore | None = None, changes: TimelineChanges | None = None,
               conflicts: ConflictFeed | None = None) -> Flask:
    """``clock`` turns kernel time into Unix time for the API. ``store`` serves
    /api/v1/sockets and the timeline page when given; ``changes`` the page's live
    stream (/api/v1/stream; without it the page polls); ``conflicts``
    /api/v1/bind-conflicts."""
    app = Flask(__name__, static_folder=None)  # the timeline serves its own assets
    # /api/v1/sockets//1 is no socket: a 404 in JSON, not a redirect to /api/v1/sockets/1.
    app.url_map.merge_slashes = False
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
        from tracer.web import timeline as timeline_bp

        app.config["STORE"] = store
        app.register_blueprint(sockets_bp.bp)
        app.register_blueprint(timeline_bp.bp)
    if conflicts is not None:
        from tracer.web import conflicts_api as conflicts_bp

        app.config["CONFLICTS"] = conflicts
        app.register_blueprint(conflicts_bp.bp)
    if changes is not None:
        from tracer.web import stream as stream_bp

        app.config["CHANGES"] = changes
        from tracer.web.server import VIEWERS

        app.config["VIEWERS"] = stream_bp.Viewers(VIEWERS)
        app.register_blueprint(stream_bp.bp)

    from tracer.web.sockets_api import check_parameters

    app.before_request(check_parameters)

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):  # API clients get JSON, never an HTML page
        return jsonify(error=exc.description, status=exc.code), exc.code

    return app
