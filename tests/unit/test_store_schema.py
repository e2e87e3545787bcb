"""The timeline's file: the columns a row is written and read by, the indexes, a new file's settings."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from tracer.store import schema


def opened(tmp_path: Path) -> tuple[sqlite3.Connection, tuple[int, int]]:
    conn = schema.connect(tmp_path / "t.db", reader=False)
    return conn, schema.prepare(conn, tmp_path / "t.db")


def test_a_new_file_is_empty_in_wal_mode_at_this_version(tmp_path):
    conn, (rows, max_id) = opened(tmp_path)
    pragma = lambda name: conn.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert (rows, max_id) == (0, 0)
    assert (pragma("journal_mode"), pragma("user_version"), pragma("page_size")) == ("wal", schema.SCHEMA_VERSION, 8192)
    assert pragma("auto_vacuum") == 2, "incremental: a size limit gives pages back to the file system"
    conn.close()


def test_preparing_again_keeps_what_is_there(tmp_path):
    conn, _ = opened(tmp_path)
    conn.execute("UPDATE meta SET value = 7 WHERE key = 'max_id'")
    conn.close()
    assert opened(tmp_path)[1] == (0, 7)


def test_rows_are_written_and_read_by_columns_the_table_has(tmp_path):
    conn, _ = opened(tmp_path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(lifecycles)")]
    assert list(schema.WRITTEN) == columns, "a row is every column, in the table's order"
    read = [c.strip() for c in schema.READ.split(",")]
    assert set(read) <= set(columns) and read[schema.READ_STARTED] == "started" and read[0] == "id"
    conn.close()


def test_the_indexes_are_the_ones_the_docstring_argues_for(tmp_path):
    conn, _ = opened(tmp_path)
    indexes = {name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
               for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                           "AND tbl_name = 'lifecycles' AND sql IS NOT NULL")}
    assert indexes == {
        "lifecycles_started": ["started"],
        "lifecycles_port": ["service_port", "started"],
        "lifecycles_laddr": ["laddr_bucket", "started"],  # no index on an address itself: too many keys
        "lifecycles_raddr": ["raddr_bucket", "started"],
        "lifecycles_peer": ["second", "lport", "rport"],
        "lifecycles_open": ["id"],
    }
    conn.close()


def test_buckets_spread_addresses_within_their_range():
    buckets = {schema.bucket(f"10.{i // 256}.{i % 256}.1") for i in range(2000)}
    assert buckets == set(range(schema.ADDR_BUCKETS))
    assert re.fullmatch(r"\d+", str(schema.bucket("2001:db8::1")))


# The table as version 1 wrote it (before how each connection closed was kept).
_V1 = """
CREATE TABLE lifecycles (
    id INTEGER PRIMARY KEY, netns INTEGER, family TEXT NOT NULL, laddr TEXT NOT NULL, lport INTEGER NOT NULL,
    raddr TEXT NOT NULL, rport INTEGER NOT NULL, role TEXT NOT NULL, service_port INTEGER NOT NULL, pid INTEGER,
    comm TEXT, open INTEGER NOT NULL, started REAL NOT NULL, ended REAL, states INTEGER NOT NULL,
    spans TEXT NOT NULL, laddr_text TEXT, raddr_text TEXT, second INTEGER NOT NULL,
    laddr_bucket INTEGER NOT NULL, raddr_bucket INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('max_id', 1), ('rows', 1);
INSERT INTO lifecycles VALUES (1, NULL, 'ipv4', '127.0.0.1', 40000, '127.0.0.1', 80, 'active', 80, 7, 'curl', 0,
    1700000000.0, 1700000001.0, 4, '[["ESTABLISHED",0,1000000]]', NULL, NULL, 1700000000, 1, 1);
PRAGMA user_version = 1;
"""


def test_a_file_of_version_1_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    from tracer.store.sqlite import SqliteStore
    from tests.unit.lives import OFFSET_NS, life

    old = sqlite3.connect(tmp_path / "t.db")
    old.executescript(_V1)
    old.close()
    store = SqliteStore(tmp_path / "t.db", 10**9, 1 << 30)
    kept = store.get(1)
    assert (kept.comm, kept.laddr, kept.closer, kept.how, kept.marks) == ("curl", "127.0.0.1", None, None, [])
    states = (("ESTABLISHED", 1.0), ("FIN_WAIT1", 0.1), ("FIN_WAIT2", 0.1), ("TIME_WAIT", 60.0))
    store.write([life(2, states=states, how=2)], OFFSET_NS)
    assert (store.get(2).closer, store.get(2).how) == ("local", "shutdown_wr")
    store.close()
    conn, (rows, max_id) = opened(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION and (rows, max_id) == (2, 2)
    conn.close()
