"""SQLite, the embedded timeline store: the writer, retention, and the connections.

The table and its indexes are tracer/store/schema.py, a row's encoding
tracer/store/rows.py, the reading rules tracer/store/query.py; this module owns the
file while it is open. One writer connection behind a lock, for the daemon's
housekeeping thread; readers borrow connections from a small pool, since the web
server answers every request in a thread of its own and a connection per thread
would be opened and leaked per request.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracer.core.lifecycle import Lifecycle, RawLife
from tracer.store import Page, StoreError
from tracer.store import query as reading
from tracer.store import rows
from tracer.store.schema import OPEN, WRITTEN, connect, prepare

log = logging.getLogger(__name__)

CHUNK = 10_000  # rows a retention transaction deletes at most: keeps the WAL and the lock short
READERS_KEPT = 4  # idle reader connections kept open
SIZE_TARGET = 0.9  # past the size limit, delete down to this share of it, so it does not trip at once again

_INSERT = f"INSERT INTO lifecycles ({', '.join(WRITTEN)}) VALUES ({', '.join('?' * len(WRITTEN))})"
_UPDATE_ALL = f"UPDATE lifecycles SET {', '.join(f'{c} = ?' for c in WRITTEN[1:])} WHERE id = ?"
# SQLite rewrites the entries of every index whose column an UPDATE sets, changed or
# not; an update that sets none of them is what almost every rewrite of an open
# socket needs (its addresses, ports and start stay as they were).
_KEYED = tuple(WRITTEN.index(c) for c in ("laddr", "lport", "raddr", "rport", "service_port", "started"))
_DERIVED = tuple(WRITTEN.index(c) for c in ("second", "laddr_bucket", "raddr_bucket"))  # follow the keyed ones
_UNKEYED = tuple(i for i in range(1, len(WRITTEN)) if i not in _KEYED and i not in _DERIVED)
_UPDATE_UNKEYED = f"UPDATE lifecycles SET {', '.join(f'{WRITTEN[i]} = ?' for i in _UNKEYED)} WHERE id = ?"
_EXISTING = (f"SELECT id, open, {', '.join(WRITTEN[i] for i in _KEYED)} FROM lifecycles "
             "WHERE id IN (SELECT value FROM json_each(?))")


def _life_id(raw: Any) -> Any:
    try:
        return raw[0]
    except (IndexError, KeyError, TypeError):
        return "?"


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
            self._conn = connect(self.path, reader=False)
        except FileExistsError:
            raise self._open_error(NotADirectoryError(0, f"{self.path.parent} is not a directory")) from None
        except (OSError, sqlite3.Error) as exc:
            raise self._open_error(exc) from None
        try:
            self._rows, self._max_id = prepare(self._conn, self.path)
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
                conn = connect(self.path, reader=True)
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

    def write(self, lives: Sequence[RawLife], offset_ns: int) -> None:
        """One transaction for the whole batch: an upsert by id where the last write wins,
        except that an open life never overwrites an ended one (a late copy of a socket's
        open state must not bring it back to life). ``offset_ns`` turns the lives'
        monotonic times into Unix ones (Clock.offset_ns). A batch that fails (disk full,
        I/O error) is rolled back, counted under ``dropped``, and raises StoreError; a
        life that cannot be stored (no history) is counted there and logged, and the
        rest go in."""
        batch: dict[int, tuple] = {}
        bad = 0
        to_row = rows.row
        for raw in lives:
            try:
                row = to_row(raw, offset_ns)
            except (IndexError, TypeError, ValueError) as exc:
                bad += 1
                self._log_failure(f"record {_life_id(raw)} cannot be stored ({exc!r})")
                continue
            prev = batch.get(row[0])
            if prev is None or prev[OPEN] or not row[OPEN]:
                batch[row[0]] = row
        with self._lock:
            self._dropped += bad
            if not batch:
                return
            try:
                with self._writing() as conn:
                    existing = {e[0]: e[1:] for e in conn.execute(_EXISTING, (rows.encode_json(list(batch)),))}
                    inserts, same_keys, new_keys = [], [], []
                    for id_, row in batch.items():
                        old = existing.get(id_)
                        if old is None:
                            inserts.append(row)
                        elif old[0] or not row[OPEN]:  # an ended row takes ended rewrites only
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

    def close_stale(self, ended_at: float, keep: Collection[int] = ()) -> int:
        """The open lives a previous run left, but for those in ``keep`` (continued: the
        kernel still has them): their last state ends at ``ended_at`` (or where it
        began, when that is later)."""
        with self._lock, self._writing() as conn:
            updates = []
            for id_, t0, spans_json in conn.execute("SELECT id, started, spans FROM lifecycles WHERE open = 1"):
                if id_ not in keep:
                    updates.append((*rows.closed(t0, spans_json, ended_at), id_))
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
        page = reading.PageQuery(port, state, addr, since, until, limit, cursor)
        with self._reading() as conn:
            return page.run(conn)

    def open_lives(self) -> list[Lifecycle]:
        """Every life still open (at start: what the previous run left open)."""
        with self._reading() as conn:
            return reading.open_ones(conn)

    def get(self, id: int) -> Lifecycle | None:
        with self._reading() as conn:
            return reading.one(conn, id)

    def peer(self, record: Lifecycle) -> Lifecycle | None:
        with self._reading() as conn:
            return reading.peer(conn, record)

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
