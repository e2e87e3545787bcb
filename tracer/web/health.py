"""Liveness and readiness, for systemd, Kubernetes probes and humans."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


def _answer(ok: bool, detail: str):
    return jsonify(status="ok" if ok else "unavailable", detail=detail), 200 if ok else 503


@bp.get("/healthz")
def healthz():
    return _answer(*current_app.config["HEALTH"].alive())


@bp.get("/readyz")
def readyz():
    return _answer(*current_app.config["HEALTH"].ready())
