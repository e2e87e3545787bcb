"""The timeline's SQLite file: its table and indexes, how it is opened, and its version.

One table, one row a socket: the columns the queries filter on are indexed, the
spans are JSON. WAL mode with synchronous=NORMAL: a committed batch survives a
crash of the daemon (a power loss may take the last few), and readers never wait
for the writer.

Write cost decides the indexes. An index takes each new row at the end of the run
of rows with the same key (the key's ``started`` is the latest), so a batch dirties
one page per distinct key it touches, and every dirty page is written to the WAL
and again to the file. An index on ``raddr`` would have as many keys as the host
has peers, and with thousands of them a batch dirties most of it. So addresses are
indexed through ADDR_BUCKETS hash buckets (``(bucket, started)``: at most that many
places a batch writes to), the peer lookup through the second a socket started (the
current second takes every insert), and the queries check the exact address on the
rows the buckets lead to. Retention walks the index on ``started`` (a socket ends
after it starts), which spares every write the upkeep of one on ``ended``. What a
choice here costs or saves is measured with tests/bench/store_write.py.
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

from tracer.store import StoreError

SCHEMA_VERSION = 2
ADDR_BUCKETS = 64

_DDL = """
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
    laddr_text TEXT,            -- the address as the socket had it, when that differs from laddr
    raddr_text TEXT,
    second INTEGER NOT NULL,    -- started, whole seconds: leads the peer lookup's index
    laddr_bucket INTEGER NOT NULL,  -- crc32(laddr) % ADDR_BUCKETS: leads the addr filter's index
    raddr_bucket INTEGER NOT NULL,
    closer TEXT,                -- who sent the first FIN: local, peer, simultaneous, none; NULL: no FIN yet
    how TEXT,                   -- how this end finished (tracer/core/closes.py HOWS); NULL: not known (yet)
    marks TEXT                  -- JSON [dropped, [[kind, state, at], ...]]: retransmissions and resets,
                                -- times in microseconds after started; NULL: none
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

# The columns a write sets, in the order of a row (tracer/store/rows.py builds them so).
WRITTEN = ("id", "netns", "family", "laddr", "lport", "raddr", "rport", "role", "service_port",
           "pid", "comm", "open", "started", "ended", "states", "spans", "laddr_text", "raddr_text",
           "second", "laddr_bucket", "raddr_bucket", "closer", "how", "marks")
OPEN = WRITTEN.index("open")
# What each version added, to bring an older file up to this one (columns are only ever added).
_UPGRADES = {2: ("ALTER TABLE lifecycles ADD COLUMN closer TEXT", "ALTER TABLE lifecycles ADD COLUMN how TEXT",
                 "ALTER TABLE lifecycles ADD COLUMN marks TEXT")}

# The columns a read takes, in the order tracer/store/rows.lifecycle reads them.
READ = ("id, netns, family, laddr, lport, raddr, rport, role, service_port, pid, comm, open, spans, "
        "laddr_text, raddr_text, started, closer, how, marks")
READ_STARTED = [c.strip() for c in READ.split(",")].index("started")


def bucket(addr: str) -> int:
    """The hash bucket that leads an address's index (see the module's docstring)."""
    return zlib.crc32(addr.encode()) % ADDR_BUCKETS


def connect(path: Path, reader: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly). The writer
    connection is used under a lock, a reader connection by one thread at a time;
    either may move between threads, hence check_same_thread=False."""
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    if reader:
        conn.execute("PRAGMA query_only = 1")
    else:
        conn.execute("PRAGMA cache_size = -8192")  # 8 MiB: keeps the pages the writes go to
    return conn


def prepare(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """Makes the writer's file ready (its settings, tables and version) and returns the
    rows it holds and the highest id it ever held. StoreError when it belongs to a
    newer version or its file system refuses write-ahead logging."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"cannot open the timeline store {path}: it was written by a newer "
                         f"tcpstate-tracer (schema {version}, this one knows {SCHEMA_VERSION}); "
                         "upgrade, or choose another --db")
    # These two take effect on a new file only, and in this order. Pages of 8 KiB: fewer
    # of them for a batch's index entries than of 4 KiB. Incremental vacuum: the pages
    # a size limit frees go back to the file system, not kept as holes.
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreError(f"cannot open the timeline store {path}: the file system refused "
                         f"write-ahead logging (journal mode {mode}); choose another --db on a local disk")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Checkpoints (the WAL copied into the file, with an fsync) run on the writer at a
    # commit; every 64 MiB instead of SQLite's 4 MiB, a page written by many batches is
    # copied once. The WAL is cut back to that size after.
    conn.execute("PRAGMA wal_autocheckpoint = 8192")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    if 0 < version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _UPGRADES[v]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    conn.executescript(_DDL)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    return values["rows"], values["max_id"]
