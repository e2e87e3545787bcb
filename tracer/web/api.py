"""The JSON API (/api/v1). Every error is JSON with a 4xx status, never a traceback."""

from __future__ import annotations

from typing import Any, Protocol

from flask import Blueprint, current_app, jsonify

from tracer.core.clock import Clock
from tracer.core.detector import Report, Stuck
from tracer.core.record import comm_text, family_name, format_addr, role_name
from tracer.core.states import STATE_NAMES

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
    report = reports.report
    return jsonify(
        scanned_at=round(clock.wall(report.at_ns), 6),
        total=len(report.stuck),
        sockets=[stuck_json(s, clock, report.at_ns) for s in report.stuck],
        counts=[{"port": port, "state": STATE_NAMES[state], "stuck": n}
                for (port, state), n in sorted(report.counts.items()) if n],
    )
