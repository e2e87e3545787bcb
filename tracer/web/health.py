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
    """200 while alive: "degraded" when it runs but has had to skip work (a restart would
    not help, so a liveness probe must not restart it), 503 when it does not run."""
    status = ("degraded" if detail.startswith("degraded") else "ok") if ok else "unavailable"
    return jsonify(status=status, detail=detail), 200 if ok else 503


@bp.get("/healthz")
def healthz():
    health: Health = current_app.config["HEALTH"]
    return _answer(*health.alive())


@bp.get("/readyz")
def readyz():
    health: Health = current_app.config["HEALTH"]
    return _answer(*health.ready())
