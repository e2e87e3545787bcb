"""GET /metrics in the Prometheus text format (OpenMetrics when the scraper asks for it)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from prometheus_client.exposition import choose_encoder

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(current_app.config["REGISTRY"]), content_type=content_type)
