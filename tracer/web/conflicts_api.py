"""GET /api/v1/bind-conflicts: the refused bind() calls, newest first, each with what
held its port and the remedy; GET /api/v1/no-local-port: the connects refused for
want of a free local port, with what held the ports toward their destination
(tracer/core/conflicts.py). Kept in memory, bounded: a restart starts the lists
again (the counters on /metrics restart too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from flask import Blueprint, current_app, jsonify

from tracer.core.conflicts import HOLDERS, Conflict, NoLocalPort
from tracer.web.sockets_api import PORT, TIME, BadParameter, _error, _integer, _nullable

bp = Blueprint("conflicts", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class ConflictFeed(Protocol):
    """The daemon's BindConflicts (tracer/daemon/conflicts.py)."""

    def recent(self, limit: int | None = None, port: int | None = None) -> list[Conflict]: ...

    def no_local_port(self, limit: int | None = None, port: int | None = None) -> list[NoLocalPort]: ...


def _newest(key: str, listed: Callable[[ConflictFeed, int, int | None], list]):
    """One of the feed's lists, newest first, as the answer's ``key``."""
    feed: ConflictFeed = current_app.config["CONFLICTS"]
    try:
        port = _integer("port", 1, 65535, "a port")
        limit = _integer("limit", 1, MAX_LIMIT, "a number")
    except BadParameter as exc:
        return _error(str(exc), 400)
    found = listed(feed, DEFAULT_LIMIT if limit is None else limit, port)
    return jsonify({key: [item.to_json() for item in found]})


@bp.get("/bind-conflicts")
def bind_conflicts():
    return _newest("conflicts", lambda feed, limit, port: feed.recent(limit, port))


@bp.get("/no-local-port")
def no_local_port():
    return _newest("refused", lambda feed, limit, port: feed.no_local_port(limit, port))


# The contract (merged into /api/v1/openapi.json).

LISTENER = {
    "type": "object",
    "required": ["address", "pid", "comm"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string"},
        "pid": {"type": "integer", "description": "0 when no process was found holding it"},
        "comm": {"type": "string"},
    },
}

# Who made the refused call: both lists start with it.
CALLER = {
    "time": TIME,
    "pid": {"type": "integer"},
    "comm": {"type": "string"},
    "netns": _nullable({"type": "integer", "description": "Network namespace inode; null when not known"}),
}

CONFLICT = {
    "type": "object",
    "description": "A bind() refused with EADDRINUSE and what held the port in the caller's namespace",
    "required": ["time", "pid", "comm", "netns", "netns_inferred", "address", "port", "reuseaddr", "reuseport",
                 "holder", "holders", "remedy"],
    "additionalProperties": False,
    "properties": {
        **CALLER,
        "netns_inferred": {"type": "boolean",
                           "description": "The caller had exited: the namespace is the one where the port was held"},
        "address": {"type": "string", "description": "The address asked for (0.0.0.0 or :: for any)"},
        "port": PORT,
        "reuseaddr": {"type": "boolean", "description": "The socket had SO_REUSEADDR set"},
        "reuseport": {"type": "boolean", "description": "The socket had SO_REUSEPORT set"},
        "holder": {"type": "string", "enum": list(HOLDERS)},
        "holders": {
            "type": "object",
            "required": ["listeners", "time_wait", "time_wait_left_s", "time_wait_free_at", "others"],
            "additionalProperties": False,
            "properties": {
                "listeners": {"type": "array", "items": LISTENER},
                "time_wait": {"type": "integer", "minimum": 0},
                "time_wait_left_s": {"type": "number", "minimum": 0,
                                     "description": "Until the last TIME_WAIT expires, from the call"},
                "time_wait_free_at": _nullable({**TIME, "description": "When the last TIME_WAIT expires"}),
                "others": {"type": "object", "additionalProperties": {"type": "integer"},
                           "description": "Other sockets on the port, by state"},
            },
        },
        "remedy": {"type": "string"},
    },
}

CONFLICTS = {
    "type": "object",
    "required": ["conflicts"],
    "additionalProperties": False,
    "properties": {"conflicts": {"type": "array", "items": {"$ref": "#/components/schemas/BindConflict"},
                                 "description": "Newest first"}},
}


NO_LOCAL_PORT = {
    "type": "object",
    "description": "A connect() refused with EADDRNOTAVAIL: no local port was free toward its destination",
    "required": ["time", "pid", "comm", "netns", "netns_inferred", "family", "address", "port", "toward",
                 "time_wait_left_s", "port_range", "remedy"],
    "additionalProperties": False,
    "properties": {
        **CALLER,
        "netns_inferred": {"type": "boolean", "description": "The caller had exited: the namespace is the "
                                                              "one with sockets toward the destination"},
        "family": {"type": "string", "enum": ["ipv4", "ipv6"]},
        "address": {"type": "string", "description": "The destination's address"},
        "port": {**PORT, "description": "The destination's port (the service port)"},
        "toward": {"type": "object", "additionalProperties": {"type": "integer"},
                   "description": "The caller's namespace's sockets toward the destination, by state: "
                                  "what held the local ports"},
        "time_wait_left_s": {"type": "number", "minimum": 0,
                             "description": "Until the first of those in TIME_WAIT expires (0: none)"},
        "port_range": _nullable({"type": "array", "items": PORT, "minItems": 2, "maxItems": 2,
                                 "description": "net.ipv4.ip_local_port_range there; null when not read"}),
        "remedy": {"type": "string"},
    },
}

NO_LOCAL_PORTS = {
    "type": "object",
    "required": ["refused"],
    "additionalProperties": False,
    "properties": {"refused": {"type": "array", "items": {"$ref": "#/components/schemas/NoLocalPort"},
                               "description": "Newest first"}},
}


def openapi_paths(query: Any, json: Any) -> dict[str, Any]:
    def listed(operation: str, summary: str, port: str, entries: str, schema: str, answer: str) -> dict[str, Any]:
        return {"get": {
            "operationId": operation,
            "summary": summary,
            "parameters": [
                query("port", {"type": "integer", "minimum": 1, "maximum": 65535}, port),
                query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                      entries),
            ],
            "responses": {
                "200": json(schema, answer),
                "400": json("Error", "A parameter is not valid; the message names it"),
            },
        }}

    return {
        "/api/v1/bind-conflicts": listed(
            "listBindConflicts", "Refused bind() calls, newest first, with their holders and the remedy",
            "Only this port", "Conflicts in the answer", "BindConflicts", "The conflicts"),
        "/api/v1/no-local-port": listed(
            "listNoLocalPort", "Connects refused for want of a free local port, newest first, with what held the ports",
            "Only this destination port", "Entries in the answer", "NoLocalPorts", "The refused connects"),
    }
