"""The JSON API (/api/v1). Every error is JSON with a 4xx status, never a traceback."""

from __future__ import annotations

from typing import Any, Protocol

from flask import Blueprint, current_app, jsonify

from tracer.core.clock import Clock
from tracer.core.detector import WATCHED, Report, Stuck
from tracer.core.record import comm_text, family_name, format_addr, role_name
from tracer.core.states import STATE_NAMES
from tracer.web.sockets_api import PORT, TIME, BadParameter, _error, _integer, _nullable, _state

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class StuckReports(Protocol):
    """The detector's latest report (the daemon's StuckScanner, tracer/daemon/stuck.py)."""

    @property
    def report(self) -> Report: ...


def stuck_json(s: Stuck, clock: Clock, at_ns: int) -> dict[str, Any]:
    e = s.entry
    since_ns = e.since_ns
    return {
        "id": e.uid or None,  # its life in the timeline (/api/v1/sockets/<id>); null: not there
        "netns": e.netns or None,
        "family": family_name(e.family),
        "laddr": format_addr(e.family, e.saddr),
        "lport": e.sport,
        "raddr": format_addr(e.family, e.daddr),
        "rport": e.dport,
        "state": s.rule.state.name,
        "age_seconds": round(s.age_ns / 1e9, 3),
        "since": round(clock.wall(since_ns), 6),
        # False: found in the kernel's table, not seen entering the state; the age is
        # a lower bound (known since the daemon started or the table was read).
        "age_known": e.age_known,
        "service_port": e.port,
        "role": role_name(e.role),
        "pid": e.pid or None,
        "comm": comm_text(e.comm) or None,
        # Retransmissions in this state the daemon saw (tcp:tcp_retransmit_skb), or null.
        "retransmits": None if s.retransmits is None else {
            "count": s.retransmits[0], "last": round(clock.wall(s.retransmits[1]), 6)},
        "evidence": s.evidence(at_ns),
        "rule": {
            "state": s.rule.state.name,
            "threshold_seconds": s.rule.threshold_s,
            "port": s.rule.port,
            "description": s.rule.describe(),
        },
    }


@bp.get("/stuck")
def stuck():
    reports: StuckReports = current_app.config["STUCK"]
    clock: Clock = current_app.config["CLOCK"]
    try:
        port = _integer("port", 1, 65535, "a port")
        state = _state()
    except BadParameter as exc:
        return _error(str(exc), 400)
    report = reports.report
    found = [s for s in report.stuck
             if (port is None or s.entry.port == port) and (state is None or s.rule.state.name == state)]
    return jsonify(
        scanned_at=round(clock.wall(report.at_ns), 6),
        total=len(found),
        sockets=[stuck_json(s, clock, report.at_ns) for s in found],
        counts=[{"port": p, "state": STATE_NAMES[st], "stuck": n}
                for (p, st), n in sorted(report.counts.items())
                if n and (port is None or p == port) and (state is None or STATE_NAMES[st] == state)],
    )


# The contract (merged into /api/v1/openapi.json).

_WATCHED_NAMES = [s.name for s in WATCHED]
STUCK = {
    "type": "object",
    "description": "A socket past its state's threshold, with the evidence",
    "required": ["id", "netns", "family", "laddr", "lport", "raddr", "rport", "state", "age_seconds", "since",
                 "age_known", "service_port", "role", "pid", "comm", "retransmits", "evidence", "rule"],
    "additionalProperties": False,
    "properties": {
        "id": _nullable({"type": "integer", "description": "Its life in the timeline (/api/v1/sockets/{id})"}),
        "netns": _nullable({"type": "integer"}),
        "family": {"type": "string", "enum": ["ipv4", "ipv6"]},
        "laddr": {"type": "string"}, "lport": PORT, "raddr": {"type": "string"}, "rport": PORT,
        "state": {"type": "string", "enum": _WATCHED_NAMES},
        "age_seconds": {"type": "number", "minimum": 0},
        "since": TIME,
        "age_known": {"type": "boolean", "description": "false: found in the kernel's table, the age a lower bound"},
        "service_port": PORT,
        "role": {"type": "string"},
        "pid": _nullable({"type": "integer"}),
        "comm": _nullable({"type": "string"}),
        "retransmits": _nullable({"type": "object", "required": ["count", "last"], "additionalProperties": False,
                                  "properties": {"count": {"type": "integer", "minimum": 0}, "last": TIME}}),
        "evidence": {"type": "string", "description": "Why it counts as stuck, in words"},
        "rule": {"type": "object", "required": ["state", "threshold_seconds", "port", "description"],
                 "additionalProperties": False,
                 "properties": {"state": {"type": "string", "enum": _WATCHED_NAMES},
                                "threshold_seconds": {"type": "number"},
                                "port": _nullable({"type": "integer"}),
                                "description": {"type": "string"}}},
    },
}
STUCK_REPORT = {
    "type": "object",
    "required": ["scanned_at", "total", "sockets", "counts"],
    "additionalProperties": False,
    "properties": {
        "scanned_at": TIME,
        "total": {"type": "integer", "minimum": 0, "description": "Stuck sockets that match the filters"},
        "sockets": {"type": "array", "items": {"$ref": "#/components/schemas/Stuck"}},
        "counts": {"type": "array", "items": {
            "type": "object", "required": ["port", "state", "stuck"], "additionalProperties": False,
            "properties": {"port": PORT,
                           "state": {"type": "string", "enum": _WATCHED_NAMES},
                           "stuck": {"type": "integer", "minimum": 1}}}},
    },
}


def openapi_paths(query: Any, json: Any) -> dict[str, Any]:
    return {"/api/v1/stuck": {"get": {
        "operationId": "listStuck",
        "summary": "Sockets past their state's threshold at the latest scan (every second), with the evidence",
        "parameters": [
            query("port", {"type": "integer", "minimum": 1, "maximum": 65535}, "Only this service port"),
            query("state", {"type": "string"}, f"Only this state: {', '.join(_WATCHED_NAMES)}"),
        ],
        "responses": {
            "200": json("StuckReport", "The latest scan's stuck sockets"),
            "400": json("Error", "A parameter is not valid; the message names it"),
        },
    }}}
