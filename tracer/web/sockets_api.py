"""GET /api/v1/sockets, /api/v1/sockets/<id> and /api/v1/openapi.json: the timeline as JSON
(the document covers /api/v1/bind-conflicts and /api/v1/no-local-port too: tracer/web/conflicts_api.py).

Every socket's life from the store (``current_app.config["STORE"]``, a
tracer.store.LifecycleStore). A bad parameter is a 400 whose message names it, an
unknown socket a 404, a store that cannot be read a 503: always JSON
``{"error": ..., "status": ...}``, never a traceback. The OpenAPI document below is
the contract; a unit test checks it and validates real answers against it.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from tracer import __version__
from tracer.core.closes import CLOSERS, HOWS
from tracer.core.lifecycle import MARKS_MAX
from tracer.core.states import ROLE_NAMES, TcpState
from tracer.store import MAX_LIMIT, LifecycleStore, StoreError, normalise_addr

bp = Blueprint("sockets", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 100
_DIGITS = re.compile(r"[0-9]{1,20}")
MAX_ID = 2**63 - 1  # SQLite's integers
MAX_VALUE = 256  # characters in a query parameter: an address, a state, a time or a cursor is far shorter


class BadParameter(ValueError):
    pass


def _error(message: str, status: int):
    return jsonify(error=message, status=status), status


def _arg(name: str) -> str | None:
    """A query parameter; an empty one (as an HTML form sends it) means not given."""
    value = request.args.get(name)
    return value if value else None


def _integer(name: str, lo: int, hi: int, what: str) -> int | None:
    text = _arg(name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text) or not lo <= int(text) <= hi:
        raise BadParameter(f"{name}: {text!r} is not {what} from {lo} to {hi}")
    return int(text)


def _time(name: str) -> float | None:
    text = _arg(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadParameter(f"{name}: {text!r} is not a time in Unix seconds (such as 1700000000.5)")
    return value


def _state() -> str | None:
    text = _arg("state")
    if text is None:
        return None
    try:
        return TcpState.parse(text).name
    except ValueError as exc:
        raise BadParameter(f"state: {exc} (one of {', '.join(s.name for s in TcpState)})") from None


def _addr() -> str | None:
    text = _arg("addr")
    return None if text is None else normalise_addr(text)  # ValueError names addr


_PATH_VARIABLE = re.compile(r"<(?:[^:<>]+:)?[^<>]+>|\{[^{}]+\}")


@functools.cache
def _parameters() -> dict[str, frozenset[str]]:
    """Each API path (its variables as {}) and the query parameters the document gives it."""
    return {_PATH_VARIABLE.sub("{}", path): frozenset(p["name"] for p in op["get"].get("parameters", ())
                                                     if p["in"] == "query")
            for path, op in openapi_document()["paths"].items()}


def check_parameters():
    """Before every /api/v1 request: a parameter the document does not list for the
    path, or one given twice, is a 400 naming it (a misspelt filter would otherwise
    answer with everything)."""
    rule = request.url_rule
    if rule is None or not rule.rule.startswith("/api/v1/"):
        return None
    known = _parameters().get(_PATH_VARIABLE.sub("{}", rule.rule))
    if known is None:
        return None
    for name in request.args:
        if name not in known:
            takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
            return _error(f"unknown parameter {name[:64]!r} for {rule.rule}: {takes}", 400)
        values = request.args.getlist(name)
        if len(values) > 1:
            return _error(f"{name}: given more than once", 400)
        if len(values[0]) > MAX_VALUE:
            return _error(f"{name}: {len(values[0])} characters, longer than any value this API takes "
                          f"(at most {MAX_VALUE})", 400)
    return None


@bp.get("/sockets")
def sockets():
    store: LifecycleStore = current_app.config["STORE"]
    try:
        filters = {
            "port": _integer("port", 1, 65535, "a port"),
            "state": _state(),
            "addr": _addr(),
            "since": _time("since"),
            "until": _time("until"),
        }
        limit = _integer("limit", 1, MAX_LIMIT, "a number")
        page = store.query(**filters, limit=DEFAULT_LIMIT if limit is None else limit, cursor=_arg("cursor"))
    except ValueError as exc:  # BadParameter here, the store's (since after until, cursor) below
        return _error(str(exc), 400)
    except StoreError as exc:
        return _error(str(exc), 503)
    return jsonify(total=page.total, sockets=[s.to_json() for s in page.sockets], next=page.next)


@bp.get("/sockets/<id_text>")
def socket(id_text: str):
    store: LifecycleStore = current_app.config["STORE"]
    if not _DIGITS.fullmatch(id_text) or int(id_text) > MAX_ID:
        return _error(f"no socket with id {id_text[:32]!r} (ids are whole numbers)", 404)
    try:
        record = store.get(int(id_text))
        if record is None:
            return _error(f"no socket with id {id_text} (never seen, or past the store's retention)", 404)
        peer = store.peer(record)
    except StoreError as exc:
        return _error(str(exc), 503)
    return jsonify({**record.to_json(), "peer": None if peer is None else peer.id})


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())


# The contract.

def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


PORT = {"type": "integer", "minimum": 0, "maximum": 65535}
TIME = {"type": "number", "description": "Unix seconds, to the microsecond"}

SPAN = {
    "type": "object",
    "description": "One state the socket was in, from since until until",
    "required": ["state", "since", "until"],
    "additionalProperties": False,
    "properties": {
        "state": {"type": "string", "enum": [s.name for s in TcpState],
                  "description": "The kernel's name of the state, without TCP_"},
        "since": TIME,
        "until": _nullable({**TIME, "description": "Unix seconds; null while the socket is in this state"}),
    },
}

SOCKET_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer", "minimum": 1, "description": "Unique across daemon restarts"},
    "netns": _nullable({"type": "integer", "description": "Network namespace inode; null when not known"}),
    "family": {"type": "string", "enum": ["ipv4", "ipv6"]},
    "laddr": {"type": "string", "description": "Local address"},
    "lport": PORT,
    "raddr": {"type": "string", "description": "Remote address"},
    "rport": PORT,
    "role": {"type": "string", "enum": list(ROLE_NAMES.values()),
             "description": "active: it called connect(); passive: accepted from a listener"},
    "service_port": {**PORT, "description": "The port of the service: remote for an active socket, local otherwise"},
    "pid": _nullable({"type": "integer", "description": "Owner's process id, when known"}),
    "comm": _nullable({"type": "string", "description": "Owner's command name, when known"}),
    "open": {"type": "boolean", "description": "Still alive (TIME_WAIT counts as alive)"},
    "states": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}, "minItems": 1,
               "description": "Every state the socket was in, oldest first"},
    "closer": _nullable({"type": "string", "enum": [*CLOSERS, None],
                         "description": "Who sent the first FIN: local (this end), peer, simultaneous (both "
                                        "FINs crossed), none (a reset or a timeout ended the connection); "
                                        "null before the first FIN, and for a listener or a failed connect"}),
    "how": _nullable({"type": "string", "enum": [*HOWS, None],
                      "description": "How this end finished: close(), shutdown(SHUT_WR) (a half-close), "
                                     "shutdown(SHUT_RDWR), a reset sent (SO_LINGER 0, unread data) or received, "
                                     "or a timeout; null while not known"}),
    "one_way": _nullable({
        "type": "object", "required": ["since", "until"], "additionalProperties": False,
        "description": "When the connection ran one way: from the first FIN to the second (for a close "
                       "by shutdown(SHUT_WR), how long it was half-closed); null before the first FIN",
        "properties": {"since": TIME,
                       "until": _nullable({**TIME, "description": "null while the second FIN has not come"})}}),
    "marks": {"type": "array", "items": {"$ref": "#/components/schemas/Mark"},
              "description": f"The socket's retransmitted segments and resets, oldest first (the latest "
                             f"{MARKS_MAX})"},
    "marks_dropped": {"type": "integer", "minimum": 0, "description": "Earlier marks not kept"},
}

MARK = {
    "type": "object",
    "description": "A segment the socket retransmitted, or a reset it sent or received",
    "required": ["kind", "state", "at"],
    "additionalProperties": False,
    "properties": {
        "kind": {"type": "string", "enum": ["retransmit", "reset_sent", "reset_received"]},
        "state": {"type": "string", "enum": [s.name for s in TcpState],
                  "description": "The state the socket was in (a retransmission in LAST_ACK is its FIN)"},
        "at": TIME,
    },
}

SOCKET = {
    "type": "object",
    "description": "One socket's life",
    "required": list(SOCKET_PROPERTIES),
    "additionalProperties": False,
    "properties": SOCKET_PROPERTIES,
}

SOCKET_DETAIL = {
    "type": "object",
    "description": "One socket's life, and the other end of its connection when that is on this host too",
    "required": [*SOCKET_PROPERTIES, "peer"],
    "additionalProperties": False,
    "properties": {**SOCKET_PROPERTIES,
                   "peer": _nullable({"type": "integer", "description": "Id of the other end's socket"})},
}

PAGE = {
    "type": "object",
    "required": ["total", "sockets", "next"],
    "additionalProperties": False,
    "properties": {
        "total": {"type": "integer", "minimum": 0, "description": "Sockets that match, on every page"},
        "sockets": {"type": "array", "items": {"$ref": "#/components/schemas/Socket"},
                    "description": "This page, by start time, then id"},
        "next": _nullable({"type": "string", "description": "Cursor of the next page; null on the last"}),
    },
}

ERROR = {
    "type": "object",
    "required": ["error", "status"],
    "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "What was wrong, naming the parameter"},
        "status": {"type": "integer", "description": "The HTTP status again"},
    },
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def openapi_document() -> dict[str, Any]:
    from tracer.web import api as stuck_api  # noqa: PLC0415 (they import this module's schemas)
    from tracer.web import conflicts_api  # noqa: PLC0415

    unavailable = _json("Error", "The store could not be read")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tcpstate-tracer timeline",
            "version": __version__,
            "description": "Every socket's life on this host, from the kernel's TCP state transitions. "
                           "An empty query parameter counts as not given.",
        },
        "paths": {
            "/api/v1/sockets": {"get": {
                "operationId": "listSockets",
                "summary": "Sockets that match every filter given, by start time",
                "parameters": [
                    _query("port", {"type": "integer", "minimum": 1, "maximum": 65535},
                           "Service port (the remote port of a client, the local port of a server)"),
                    _query("state", {"type": "string"},
                           "A state the socket was in at some point: ESTABLISHED, fin-wait-1, TCP_LAST_ACK ..."),
                    _query("addr", {"type": "string"},
                           "Local or remote address (an IPv4-mapped IPv6 address matches its IPv4 form)"),
                    _query("since", {"type": "number"}, "Lives that had not ended before this (Unix seconds)"),
                    _query("until", {"type": "number"}, "Lives that had started by this (Unix seconds)"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                     "default": DEFAULT_LIMIT}, "Sockets on this page"),
                    _query("cursor", {"type": "string"},
                           "The next of the previous page, with the same filters (limit may change)"),
                ],
                "responses": {
                    "200": _json("Page", "One page of sockets"),
                    "400": _json("Error", "A parameter is not valid; the message names it"),
                    "503": unavailable,
                },
            }},
            "/api/v1/sockets/{id}": {"get": {
                "operationId": "getSocket",
                "summary": "One socket's life, with the id of its peer",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {
                    "200": _json("SocketDetail", "The socket"),
                    "404": _json("Error", "No such socket (or not a number)"),
                    "503": unavailable,
                },
            }},
            **conflicts_api.openapi_paths(_query, _json),
            **stuck_api.openapi_paths(_query, _json),
            "/api/v1/stream": {"get": {
                "operationId": "stream",
                "summary": "Server-sent events: `changed` whenever the timeline was written",
                "responses": {"200": {"description": "An event stream (text/event-stream)",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "503": _json("Error", "Too many live viewers")},
            }},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {"schemas": {"Span": SPAN, "Mark": MARK, "Socket": SOCKET, "SocketDetail": SOCKET_DETAIL,
                                   "Page": PAGE, "Error": ERROR, "BindConflict": conflicts_api.CONFLICT,
                                   "BindConflicts": conflicts_api.CONFLICTS,
                                   "NoLocalPort": conflicts_api.NO_LOCAL_PORT,
                                   "NoLocalPorts": conflicts_api.NO_LOCAL_PORTS,
                                   "Stuck": stuck_api.STUCK, "StuckReport": stuck_api.STUCK_REPORT}},
    }
