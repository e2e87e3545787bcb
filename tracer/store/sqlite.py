"""SQLite, the embedded timeline store.

One table, one row a socket: the columns the queries filter on are indexed, the
spans are JSON. WAL mode with synchronous=NORMAL: a committed batch survives a
crash of the daemon (a power loss may take the last few), and readers never wait
for the writer. One writer connection behind a lock; readers borrow connections
from a small pool, since the web server answers every request in a thread of its
own and a connection per thread would be opened and leaked per request.

Write cost decides the indexes. An index takes each new row at the end of the run
of rows with the same key (the key's ``started`` is the latest), so a batch dirties
one page per distinct key it touches, and every dirty page is written to the WAL
and again to the file. An index on ``raddr`` has as many keys as the host has
peers: with 2,000 of them, a batch of 5,000 dirtied most of the index, and 1.2
million stored records took 30% off the records written per second. So addresses
are indexed through 64 hash buckets (``(bucket, started)``: at most 64 places a
batch writes to), the peer lookup through the second a socket started (the current
second takes every insert), and the queries check the exact address on the rows
the buckets lead to. Retention walks the index on ``started`` (a socket ends after
it starts), which spares every write the upkeep of one on ``ended``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracer.core.lifecycle import Lifecycle, Span
from tracer.core.record import AF_INET, comm_text, format_addr, parse_addr
from tracer.core.states import ROLE_NAMES, STATE_NAMES, TcpState
from tracer.store import MAX_LIMIT, Page, StoreError, normalise_addr

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK = 10_000  # rows a retention transaction deletes at most: keeps the WAL and the lock short
READERS_KEPT = 4  # idle reader connections kept open
SIZE_TARGET = 0.9  # past the size limit, delete down to this share of it, so it does not trip at once again
ADDR_BUCKETS = 64
PEER_WINDOW_S = 180  # the two ends of a connection start within a SYN timeout (127 s) of each other

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lifecycles (
    id INTEGER PRIMARY KEY,
    netns INTEGER,
    family TEXT NOT NULL,
    laddr TEXT NOT NULL,        -- normalised: an IPv4-mapped IPv6 address is written as IPv4
    lport INTEGER NOT NULL,
    raddr TEXT NOT NULL,
    rport INTEGER NOT NULL,
    role TEXT NOT NULL,
    service_port INTEGER NOT NULL,
    pid INTEGER,
    comm TEXT,
    open INTEGER NOT NULL,
    started REAL NOT NULL,
    ended REAL,                 -- NULL while open
    states INTEGER NOT NULL,    -- bit 1 << TcpState for every state the socket was in
    spans TEXT NOT NULL,        -- JSON [[state, since, until], ...], times in microseconds after started
    laddr_text TEXT,            -- the address as the record had it, when that differs from laddr
    raddr_text TEXT,
    second INTEGER NOT NULL,    -- started, whole seconds: leads the peer lookup's index
    laddr_bucket INTEGER NOT NULL,  -- crc32(laddr) % 64: leads the addr filter's index
    raddr_bucket INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lifecycles_started ON lifecycles (started);
CREATE INDEX IF NOT EXISTS lifecycles_port ON lifecycles (service_port, started);
CREATE INDEX IF NOT EXISTS lifecycles_laddr ON lifecycles (laddr_bucket, started);
CREATE INDEX IF NOT EXISTS lifecycles_raddr ON lifecycles (raddr_bucket, started);
CREATE INDEX IF NOT EXISTS lifecycles_peer ON lifecycles (second, lport, rport);
CREATE INDEX IF NOT EXISTS lifecycles_open ON lifecycles (id) WHERE open = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('max_id', 0), ('rows', 0);
"""

_WRITTEN = ("id", "netns", "family", "laddr", "lport", "raddr", "rport", "role", "service_port",
            "pid", "comm", "open", "started", "ended", "states", "spans", "laddr_text", "raddr_text",
            "second", "laddr_bucket", "raddr_bucket")
_INSERT = f"INSERT INTO lifecycles ({', '.join(_WRITTEN)}) VALUES ({', '.join('?' * len(_WRITTEN))})"
_UPDATE_ALL = f"UPDATE lifecycles SET {', '.join(f'{c} = ?' for c in _WRITTEN[1:])} WHERE id = ?"
# SQLite rewrites the entries of every index whose column an UPDATE sets, changed or
# not; an update that sets none of them ran twice as fast, and it is what almost every
# rewrite of an open socket needs (its addresses, ports and start stay as they were).
_KEYED = (3, 4, 5, 6, 8, 12)  # laddr, lport, raddr, rport, service_port, started (the rest follow)
_UNKEYED = tuple(i for i in range(1, 18) if i not in _KEYED)
_UPDATE_UNKEYED = f"UPDATE lifecycles SET {', '.join(f'{_WRITTEN[i]} = ?' for i in _UNKEYED)} WHERE id = ?"
_EXISTING = ("SELECT id, open, laddr, lport, raddr, rport, service_port, started FROM lifecycles "
             "WHERE id IN (SELECT value FROM json_each(?))")

_READ = ("id, netns, family, laddr, lport, raddr, rport, role, service_port, pid, comm, open, spans, "
         "laddr_text, raddr_text, started")

_BITS = {s.name: 1 << s.value for s in TcpState}
_QUOTED = {s.name: f'"{s.name}"' for s in TcpState}
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _bucket(addr: str) -> int:
    return zlib.crc32(addr.encode()) % ADDR_BUCKETS


@functools.lru_cache(maxsize=65536)
def _stored_addr(text: str) -> tuple[str, int]:
    """The address as the store indexes it, and its bucket; text that is no address is
    kept as it is."""
    try:
        addr = format_addr(*parse_addr(text))
    except ValueError:
        addr = text
    return addr, _bucket(addr)


def _at(t0: float, us: int) -> float:
    return round(t0 + us / 1e6, 6)


def _row(r: Lifecycle) -> tuple:
    """The row of a record. Times are kept to the microsecond (the tracker rounds them
    so): the spans hold whole microseconds after ``started``, cheaper to encode than
    floats by half, and this encoding is a third of what a write costs."""
    spans = r.states
    t0 = round(spans[0].since, 6)  # IndexError for a record without spans: the caller drops it
    mask = 0
    parts = []
    for s in spans:  # inlined: this loop runs five times a socket at up to 58,000 sockets/s
        state, until = s.state, s.until
        mask |= _BITS.get(state, 0)
        parts.append(f"[{_QUOTED.get(state) or _encode(str(state))},{round((s.since - t0) * 1e6)},"
                     f"{'null' if until is None else round((until - t0) * 1e6)}]")
    last = spans[-1]
    ended = None if r.open else _at(t0, round(((last.since if last.until is None else last.until) - t0) * 1e6))
    laddr, lbucket = _stored_addr(r.laddr)
    raddr, rbucket = _stored_addr(r.raddr)
    return (r.id, r.netns, r.family, laddr, r.lport, raddr, r.rport, r.role, r.service_port, r.pid, r.comm,
            1 if r.open else 0, t0, ended, mask, "[" + ",".join(parts) + "]",
            None if laddr == r.laddr else r.laddr, None if raddr == r.raddr else r.raddr,
            math.floor(t0), lbucket, rbucket)


_RAW_CACHE_MAX = 65536
_raw_addrs: dict[tuple[int, bytes], tuple[str, int, str | None]] = {}
_raw_comms: dict[bytes, str | None] = {}
_templates: dict[tuple[tuple[int, ...], bool], tuple[str, int]] = {}


def _raw_addr(family: int, raw: bytes) -> tuple[str, int, str | None]:
    """(stored address, its bucket, the text when it differs), remembered: a host
    talks to few addresses."""
    got = _raw_addrs.get((family, raw))
    if got is None:
        if len(_raw_addrs) >= _RAW_CACHE_MAX:
            _raw_addrs.clear()
        text = format_addr(family, raw)
        addr, bucket = _stored_addr(text)
        got = _raw_addrs[(family, raw)] = (addr, bucket, None if addr == text else text)
    return got


def _raw_comm(raw: bytes) -> str | None:
    got = _raw_comms.get(raw, False)
    if got is False:
        if len(_raw_comms) >= _RAW_CACHE_MAX:
            _raw_comms.clear()
        got = _raw_comms[raw] = comm_text(raw) or None
    return got


def _template(states: tuple[int, ...], alive: bool) -> tuple[str, int]:
    """The spans' JSON for a sequence of states, with {i} where time i goes (0 is the
    start, i the start of span i, the last the end), and the states' bits. Sockets of
    a service follow a handful of sequences, so this is made once per sequence."""
    got = _templates.get((states, alive))
    if got is None:
        mask, parts = 0, []
        for i, state in enumerate(states):
            mask |= 1 << state
            until = "null" if alive and i == len(states) - 1 else "{%d}" % (i + 1)
            parts.append('["%s",{%d},%s]' % (STATE_NAMES[state], i, until))
        got = _templates[(states, alive)] = ("[" + ",".join(parts) + "]", mask)
    return got


def _raw_row(raw: tuple, offset_ns: int) -> tuple:
    """The row of a raw life (tracer/core/lifecycle.RawLife), made without a Lifecycle:
    the daemon writes up to 58,000 of these a second. Times go to whole microseconds
    (floored) and the spans hold them relative to the start, as _row does."""
    uid, netns, fam, saddr, sport, daddr, dport, role, port, pid, comm, history, end_ns = raw
    us = [(t + offset_ns) // 1000 for t in history[1::2]]
    t0 = us[0]  # IndexError for a life without history: the caller drops it
    alive = end_ns is None
    rel = [u - t0 for u in us]
    if not alive:
        rel.append((end_ns + offset_ns) // 1000 - t0)
    spans, mask = _template(history[::2], alive)
    laddr, lbucket, ltext = _raw_addr(fam, saddr)
    raddr, rbucket, rtext = _raw_addr(fam, daddr)
    return (uid, netns or None, "ipv4" if fam == AF_INET else "ipv6", laddr, sport, raddr, dport,
            ROLE_NAMES.get(role, "unknown"), port, pid or None, _raw_comm(comm), 1 if alive else 0,
            t0 / 1e6, None if alive else (t0 + rel[-1]) / 1e6, mask, spans.format(*rel), ltext, rtext,
            t0 // 1_000_000, lbucket, rbucket)


def _record(row: tuple) -> Lifecycle:
    (id_, netns, family, laddr, lport, raddr, rport, role, port, pid, comm, open_, spans,
     laddr_text, raddr_text, t0) = row
    states = [Span(state, _at(t0, since), None if until is None else _at(t0, until))
              for state, since, until in json.loads(spans)]
    return Lifecycle(id=id_, netns=netns, family=family, laddr=laddr_text or laddr, lport=lport,
                     raddr=raddr_text or raddr, rport=rport, role=role, service_port=port, pid=pid,
                     comm=comm, open=bool(open_), states=states)


def _record_id(r: Any) -> Any:
    if isinstance(r, tuple):
        return r[0] if r else "?"
    return getattr(r, "id", "?")


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
        params += [_bucket(addr), addr, _bucket(addr), addr]
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
    return hashlib.sha256(_encode(filters).encode()).hexdigest()[:16]


def _encode_cursor(key: str, started: float, id_: int) -> str:
    raw = _encode([1, key, started, id_]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str, key: str) -> tuple[float, int]:
    try:
        if not isinstance(cursor, str) or not cursor.isascii():
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, cursor_key, started, id_ = json.loads(raw)
        if version != 1 or not _is_time(started) or isinstance(id_, bool) or not isinstance(id_, int):
            raise ValueError
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise ValueError("cursor: not a cursor this API handed out (start again without it)") from None
    if cursor_key != key:
        raise ValueError("cursor: it belongs to a query with other filters (keep port, state, addr, "
                         "since and until as they were, or start again without a cursor)")
    return float(started), id_


def _connect(path: Path, reader: bool) -> sqlite3.Connection:
    # check_same_thread=False: the writer connection is used under a lock, a reader
    # connection by one thread at a time; either may move between threads.
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    if reader:
        conn.execute("PRAGMA query_only = 1")
    else:
        conn.execute("PRAGMA cache_size = -8192")  # 8 MiB: keeps the pages the writes go to
    return conn


class SqliteStore:
    """``retention_s``: ended records older than that are deleted; ``retention_bytes``:
    past that size of the database, the oldest ended records are."""

    def __init__(self, path: Path | str, retention_s: float, retention_bytes: int) -> None:
        self.path = Path(path)
        self.retention_s = float(retention_s)
        self.retention_bytes = int(retention_bytes)
        self._lock = threading.Lock()  # the writer connection and the counters
        self._idle: list[sqlite3.Connection] = []
        self._idle_lock = threading.Lock()
        self._closed = False
        self._writes = self._dropped = self._deleted = 0
        self._last_failure = ""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect(self.path, reader=False)
        except FileExistsError:
            raise self._open_error(NotADirectoryError(0, f"{self.path.parent} is not a directory")) from None
        except (OSError, sqlite3.Error) as exc:
            raise self._open_error(exc) from None
        try:
            self._rows, self._max_id = self._prepare()
        except StoreError:
            self._conn.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self._conn.close()
            raise self._open_error(exc) from None

    def _open_error(self, exc: BaseException) -> StoreError:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StoreError(f"cannot open the timeline store {self.path}: {why} "
                          "(choose another --db, or fix the path and its permissions)")

    def _prepare(self) -> tuple[int, int]:
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"cannot open the timeline store {self.path}: it was written by a newer "
                             f"tcpstate-tracer (schema {version}, this one knows {SCHEMA_VERSION}); "
                             "upgrade, or choose another --db")
        # These two take effect on a new file only, and in this order. Incremental vacuum:
        # the pages a size limit frees go back to the file system, not kept as holes.
        conn.execute("PRAGMA page_size = 8192")  # measured: 10-15% more records/s than 4096
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"cannot open the timeline store {self.path}: the file system refused "
                             f"write-ahead logging (journal mode {mode}); choose another --db on a local disk")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints (the WAL copied into the file, with an fsync) run on the writer at a
        # commit; every 64 MiB instead of SQLite's 4 MiB, a page written by many batches is
        # copied once (measured: 13% more records/s). The WAL is cut back to that size after.
        conn.execute("PRAGMA wal_autocheckpoint = 8192")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        return values["rows"], values["max_id"]

    # Connections

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the timeline store {self.path} is closed")

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the writer connection; the caller holds self._lock."""
        self._check_open()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A borrowed reader connection inside one read transaction: a consistent snapshot."""
        self._check_open()
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = _connect(self.path, reader=True)
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the timeline store {self.path}: {exc}") from None
        finally:
            if conn is not None:
                with self._idle_lock:
                    keep = not self._closed and len(self._idle) < READERS_KEPT and not conn.in_transaction
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    # Writing

    def write(self, records: list[Lifecycle]) -> None:
        """One transaction for the whole batch: an upsert by id where the last write wins,
        except that an open record never overwrites a closed one (a late copy of a socket's
        open state must not bring it back to life). A batch that fails (disk full, I/O
        error) is rolled back, counted under ``dropped``, and raises StoreError; a record
        that cannot be stored (no spans) is counted there and logged, and the rest go in."""
        self._write_rows(records, _row)

    def write_raw(self, lives: list[tuple], offset_ns: int) -> None:
        """``write`` for raw lives (tracer/core/lifecycle.RawLife), as the daemon drains
        them; ``offset_ns`` turns their monotonic times into Unix ones (Clock.offset_ns)."""
        self._write_rows(lives, lambda raw: _raw_row(raw, offset_ns))

    def _write_rows(self, records: list, to_row: Callable[[Any], tuple]) -> None:
        batch: dict[int, tuple] = {}
        bad = 0
        for r in records:
            try:
                row = to_row(r)
            except (IndexError, AttributeError, TypeError, ValueError) as exc:
                bad += 1
                self._log_failure(f"record {_record_id(r)} cannot be stored ({exc!r})")
                continue
            prev = batch.get(row[0])
            if prev is None or prev[11] or not row[11]:
                batch[row[0]] = row
        with self._lock:
            self._dropped += bad
            if not batch:
                return
            try:
                with self._writing() as conn:
                    existing = {e[0]: e[1:] for e in conn.execute(_EXISTING, (_encode(list(batch)),))}
                    inserts, same_keys, new_keys = [], [], []
                    for id_, row in batch.items():
                        old = existing.get(id_)
                        if old is None:
                            inserts.append(row)
                        elif old[0] or not row[11]:  # a closed row takes closed rewrites only
                            if old[1:] == tuple(row[i] for i in _KEYED):
                                same_keys.append(tuple(row[i] for i in _UNKEYED) + (id_,))
                            else:
                                new_keys.append(row[1:] + (id_,))
                    conn.executemany(_INSERT, inserts)
                    conn.executemany(_UPDATE_UNKEYED, same_keys)
                    conn.executemany(_UPDATE_ALL, new_keys)
                    max_id = max(self._max_id, max(batch))
                    conn.execute("UPDATE meta SET value = value + ? WHERE key = 'rows'", (len(inserts),))
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'max_id'", (max_id,))
            except sqlite3.Error as exc:
                self._dropped += len(batch)
                raise StoreError(f"cannot write {len(batch)} records to the timeline store {self.path}: {exc} "
                                 "(is its disk full or read-only?)") from None
            self._rows += len(inserts)
            self._max_id = max_id
            self._writes += len(inserts) + len(same_keys) + len(new_keys)

    def _log_failure(self, message: str) -> None:
        if message != self._last_failure:  # once per kind of failure, not once per record
            log.warning("timeline store %s: %s; counted as dropped", self.path, message)
        self._last_failure = message

    def close_stale(self, ended_at: float) -> int:
        """Their last state ends at ``ended_at`` (or where it began, when that is later)."""
        with self._lock, self._writing() as conn:
            updates = []
            for id_, t0, spans_json in conn.execute("SELECT id, started, spans FROM lifecycles WHERE open = 1"):
                spans = json.loads(spans_json)
                last = spans[-1]
                if last[2] is None:
                    last[2] = max(round((ended_at - t0) * 1e6), last[1])
                updates.append((_at(t0, last[2]), _encode(spans), id_))
            conn.executemany("UPDATE lifecycles SET open = 0, ended = ?, spans = ? WHERE id = ?", updates)
        if updates:
            log.info("timeline store: closed %d sockets a previous run left open", len(updates))
        return len(updates)

    def retain(self, now: float) -> int:
        """By age: records that ended more than retention_s ago; open ones stay whatever
        their age. By size: past retention_bytes, the ended records that started first
        go, down to 90% of it, and the freed pages go back to the file system."""
        deleted = 0
        cutoff = now - self.retention_s
        with self._lock:
            while n := self._delete("WHERE started < ? AND ended < ? LIMIT ?", (cutoff, cutoff, CHUNK)):
                deleted += n
            for _ in range(1000):  # bounded: each pass deletes at most CHUNK rows
                used = self._used_bytes()
                if used <= self.retention_bytes or self._rows == 0:
                    break
                excess = used - self.retention_bytes * SIZE_TARGET
                want = max(1, min(CHUNK, math.ceil(excess / (used / self._rows))))
                n = self._delete("WHERE open = 0 ORDER BY started LIMIT ?", (want,))
                if not n:
                    log.warning("timeline store %s: %d bytes in use, over the limit of %d, "
                                "but every record left is open", self.path, used, self.retention_bytes)
                    break
                deleted += n
            if deleted:
                # executescript: execute() steps a PRAGMA once, and this one frees a page a step.
                self._conn.executescript("PRAGMA incremental_vacuum;")
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return deleted

    def _delete(self, which: str, params: tuple) -> int:
        with self._writing() as conn:
            n = conn.execute(f"DELETE FROM lifecycles WHERE id IN (SELECT id FROM lifecycles {which})",
                             params).rowcount
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'rows'", (n,))
        self._rows -= n
        self._deleted += n
        return n

    def _used_bytes(self) -> int:
        pragma = self._conn.execute
        pages = pragma("PRAGMA page_count").fetchone()[0] - pragma("PRAGMA freelist_count").fetchone()[0]
        return pages * pragma("PRAGMA page_size").fetchone()[0]

    # Reading

    def query(self, port: int | None = None, state: str | None = None, addr: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 100,
              cursor: str | None = None) -> Page:
        where, params, filters = _filters(port, state, addr, since, until)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: {limit!r} is not a number from 1 to {MAX_LIMIT}")
        key = _query_key(filters)
        page_where, page_params = list(where), list(params)
        if cursor is not None:
            page_where.append("(started, id) > (?, ?)")
            page_params += _decode_cursor(cursor, key)
        count_sql = "SELECT count(*) FROM lifecycles" + (" WHERE " + " AND ".join(where) if where else "")
        page_sql = (f"SELECT {_READ} FROM lifecycles" + (" WHERE " + " AND ".join(page_where) if page_where else "")
                    + " ORDER BY started, id LIMIT ?")
        with self._reading() as conn:
            total = conn.execute(count_sql, params).fetchone()[0]
            rows = conn.execute(page_sql, page_params + [limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(key, rows[-1][-1], rows[-1][0]) if more else None
        return Page(total=total, sockets=[_record(r) for r in rows], next=next_cursor)

    def get(self, id: int) -> Lifecycle | None:
        with self._reading() as conn:
            row = conn.execute(f"SELECT {_READ} FROM lifecycles WHERE id = ?", (id,)).fetchone()
        return None if row is None else _record(row)

    def peer(self, record: Lifecycle) -> Lifecycle | None:
        """Same four-tuple the other way round, a life that overlaps, the same network
        namespace (or one of them unknown); the closest start wins. Only starts within
        PEER_WINDOW_S of this one's are looked at: the two ends of a connection start
        within a SYN timeout of each other, and a busy 4-tuple is used again every second."""
        if not record.states or not record.rport or not record.lport:
            return None  # a listener, or a socket whose ports are not known yet
        started = record.started
        earliest, latest = started - PEER_WINDOW_S, started + PEER_WINDOW_S
        if not record.open and record.ended is not None:
            latest = min(latest, record.ended)
        seconds = list(range(math.floor(earliest), math.floor(latest) + 1))
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_READ} FROM lifecycles "
                f"WHERE second IN ({', '.join('?' * len(seconds))}) AND lport = ? AND rport = ? "
                "AND laddr = ? AND raddr = ? AND started BETWEEN ? AND ? AND id != ? "
                "AND (ended IS NULL OR ended >= ?) AND (netns IS NULL OR ? IS NULL OR netns = ?) "
                "ORDER BY abs(started - ?), id LIMIT 1",
                (*seconds, record.rport, record.lport, _stored_addr(record.raddr)[0],
                 _stored_addr(record.laddr)[0], earliest, latest, record.id, started,
                 record.netns, record.netns, started)).fetchone()
        return None if row is None else _record(row)

    def next_id(self) -> int:
        with self._lock:
            self._check_open()
            return self._max_id + 1

    def stats(self) -> dict[str, Any]:
        """Counters since this store was opened (writes, dropped, deleted), and its rows and
        bytes on disk (the file, its WAL and its shared-memory index) now."""
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        # No lock: a scrape must not wait for a batch being written (each number is read whole).
        return {"rows": self._rows, "bytes": size, "writes": self._writes, "dropped": self._dropped,
                "deleted": self._deleted}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
