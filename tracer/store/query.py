"""Reading the timeline: the filters as SQL, pages walked by cursor, one socket, its peer.

Apart from the store's connections (tracer/store/sqlite.py) because reading has rules
of its own: every argument is checked and a bad one is a ValueError naming it (the
API passes the message on as a 400), and a cursor is bound to the filters it was
handed out for, so that a page never goes on with another query's position. Each
function runs on a connection inside the caller's read transaction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import sqlite3
from typing import Any

from tracer.core.lifecycle import Lifecycle
from tracer.core.states import TcpState
from tracer.store import MAX_LIMIT, Page, normalise_addr
from tracer.store.rows import encode_json, lifecycle
from tracer.store.schema import READ, READ_STARTED, bucket

PEER_WINDOW_S = 180  # the two ends of a connection start within a SYN timeout (127 s) of each other
_CURSOR_VERSION = 1


def _is_time(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _filters(port: int | None, state: str | None, addr: str | None, since: float | None,
             until: float | None) -> tuple[list[str], list[Any], list[Any]]:
    """SQL conditions, their parameters, and the normalised filters (what a cursor is bound to)."""
    where: list[str] = []
    params: list[Any] = []
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port: {port!r} is not a port from 0 to 65535")
        # With an address as well, "+" keeps the planner off the port's index: an address
        # picks out far fewer sockets than a port, and without ANALYZE's statistics (too
        # slow to keep up to date here) SQLite cannot tell which of the two to use.
        where.append("+service_port = ?" if addr is not None else "service_port = ?")
        params.append(port)
    bit = None
    if state is not None:
        try:
            bit = 1 << TcpState.parse(state).value
        except ValueError as exc:
            raise ValueError(f"state: {exc}") from None
        where.append("states & ? != 0")
        params.append(bit)
    if addr is not None:
        addr = normalise_addr(addr)
        where.append("((laddr_bucket = ? AND laddr = ?) OR (raddr_bucket = ? AND raddr = ?))")
        params += [bucket(addr), addr, bucket(addr), addr]
    for name, value in (("since", since), ("until", until)):
        if value is not None and not _is_time(value):
            raise ValueError(f"{name}: {value!r} is not a time in Unix seconds")
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since}) is after until ({until})")
    if since is not None:  # the life [started, ended or +inf] overlaps [since, until]
        where.append("(ended IS NULL OR ended >= ?)")
        params.append(since)
    if until is not None:
        where.append("started <= ?")
        params.append(until)
    return where, params, [port, bit, addr, since, until]


def _query_key(filters: list[Any]) -> str:
    return hashlib.sha256(encode_json(filters).encode()).hexdigest()[:16]


def encode_cursor(key: str, started: float, id_: int) -> str:
    raw = encode_json([_CURSOR_VERSION, key, started, id_]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, key: str) -> tuple[float, int]:
    """(started, id) of the last socket of the previous page; ValueError naming the
    cursor when it is not one handed out, or was handed out for other filters."""
    try:
        if not isinstance(cursor, str) or not cursor.isascii():
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, cursor_key, started, id_ = json.loads(raw)
        if version != _CURSOR_VERSION or not _is_time(started) or isinstance(id_, bool) or not isinstance(id_, int):
            raise ValueError
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise ValueError("cursor: not a cursor this API handed out (start again without it)") from None
    if cursor_key != key:
        raise ValueError("cursor: it belongs to a query with other filters (keep port, state, addr, "
                         "since and until as they were, or start again without a cursor)")
    return float(started), id_


class PageQuery:
    """One page's query, checked before the store opens a read transaction for it."""

    def __init__(self, port: int | None, state: str | None, addr: str | None, since: float | None,
                 until: float | None, limit: int, cursor: str | None) -> None:
        where, self.params, filters = _filters(port, state, addr, since, until)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: {limit!r} is not a number from 1 to {MAX_LIMIT}")
        self.limit = limit
        self.key = _query_key(filters)
        page_where, self.page_params = list(where), list(self.params)
        if cursor is not None:
            page_where.append("(started, id) > (?, ?)")
            self.page_params += decode_cursor(cursor, self.key)
        self.count_sql = "SELECT count(*) FROM lifecycles" + (" WHERE " + " AND ".join(where) if where else "")
        self.page_sql = (f"SELECT {READ} FROM lifecycles"
                         + (" WHERE " + " AND ".join(page_where) if page_where else "")
                         + " ORDER BY started, id LIMIT ?")

    def run(self, conn: sqlite3.Connection) -> Page:
        """Every match counted, and this page (one more row read tells whether another follows)."""
        total = conn.execute(self.count_sql, self.params).fetchone()[0]
        rows = conn.execute(self.page_sql, self.page_params + [self.limit + 1]).fetchall()
        more = len(rows) > self.limit
        rows = rows[:self.limit]
        next_cursor = encode_cursor(self.key, rows[-1][READ_STARTED], rows[-1][0]) if more else None
        return Page(total=total, sockets=[lifecycle(r) for r in rows], next=next_cursor)


def one(conn: sqlite3.Connection, id_: int) -> Lifecycle | None:
    row = conn.execute(f"SELECT {READ} FROM lifecycles WHERE id = ?", (id_,)).fetchone()
    return None if row is None else lifecycle(row)


def open_ones(conn: sqlite3.Connection) -> list[Lifecycle]:
    return [lifecycle(row) for row in conn.execute(f"SELECT {READ} FROM lifecycles WHERE open = 1 ORDER BY id")]


_PEER_READ = ", ".join(f"p.{c.strip()}" for c in READ.split(","))


def peer(conn: sqlite3.Connection, record: Lifecycle) -> Lifecycle | None:
    """Same four-tuple the other way round, a life that overlaps, the same network
    namespace (or one of them unknown); the closest start wins. Only starts within
    PEER_WINDOW_S of this one's are looked at: the two ends of a connection start
    within a SYN timeout of each other, and a busy 4-tuple is used again every second.
    The addresses compared are the ones stored in ``record``'s row (the text a
    Lifecycle shows is never parsed back), so ``record`` is one this store returned."""
    if not record.states or not record.rport or not record.lport:
        return None  # a listener, or a socket whose ports are not known yet
    started = record.started
    earliest, latest = started - PEER_WINDOW_S, started + PEER_WINDOW_S
    if not record.open and record.ended is not None:
        latest = min(latest, record.ended)
    seconds = list(range(math.floor(earliest), math.floor(latest) + 1))
    row = conn.execute(
        f"SELECT {_PEER_READ} FROM lifecycles AS me, lifecycles AS p "
        f"WHERE me.id = ? AND p.second IN ({', '.join('?' * len(seconds))}) AND p.lport = ? AND p.rport = ? "
        "AND p.laddr = me.raddr AND p.raddr = me.laddr AND p.started BETWEEN ? AND ? AND p.id != me.id "
        "AND (p.ended IS NULL OR p.ended >= ?) AND (p.netns IS NULL OR ? IS NULL OR p.netns = ?) "
        "ORDER BY abs(p.started - ?), p.id LIMIT 1",
        (record.id, *seconds, record.rport, record.lport, earliest, latest, started,
         record.netns, record.netns, started)).fetchone()
    return None if row is None else lifecycle(row)
