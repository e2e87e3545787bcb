"""Liveness and readiness, for systemd, Kubernetes probes and humans."""

from __future__ import annotations

from typing import Protocol

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


class Health(Protocol):
    """What the probes ask (the daemon's event reader, tracer/daemon/pipeline.py)."""

    def alive(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


def _answer(ok: bool, detail: str):
    return jsonify(status="ok" if ok else "unavailable", detail=detail), 200 if ok else 503


@bp.get("/healthz")
def healthz():
    health: Health = current_app.config["HEALTH"]
    return _answer(*health.alive())


@bp.get("/readyz")
def readyz():
    health: Health = current_app.config["HEALTH"]
    return _answer(*health.ready())
