"""Reading the timeline: the plans the filters and the peer lookup get, cursors, a peer of a stranger."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tracer.store import query
from tracer.store.sqlite import SqliteStore

from lives import OFFSET_NS, SERVER_CLOSE, life, read


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "t.db", 3600, 1 << 30)
    s.write([life(i, start=1000 + i, lport=40000 + i) for i in range(1, 50)], OFFSET_NS)
    yield s
    s.close()


def plan(store: SqliteStore, sql: str, params: list) -> str:
    return " | ".join(r[3] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params))


@pytest.mark.parametrize("filters, index", [
    ({"port": 8080}, "lifecycles_port"),
    ({"addr": "10.0.0.1"}, "lifecycles_laddr"),
    ({"addr": "10.0.0.1", "port": 8080}, "lifecycles_raddr"),  # the address leads, not the port
    ({"until": 1010.0}, "lifecycles_started"),
])
def test_each_filter_is_answered_from_its_index(store, filters, index):
    page = query.PageQuery(**{"port": None, "state": None, "addr": None, "since": None, "until": None,
                              **filters}, limit=10, cursor=None)
    got = plan(store, page.page_sql, page.page_params + [11])
    assert index in got, got
    if "addr" in filters:
        assert "lifecycles_laddr" in got and "lifecycles_raddr" in got and "lifecycles_port" not in got


def test_the_peer_lookup_walks_the_peer_index(store, monkeypatch):
    statements: list[str] = []
    real = query.peer

    def traced(conn, record):
        conn.set_trace_callback(statements.append)
        try:
            return real(conn, record)
        finally:
            conn.set_trace_callback(None)

    monkeypatch.setattr(query, "peer", traced)
    store.peer(store.get(3))
    (sql,) = [s for s in statements if s.lstrip().startswith("SELECT")]
    got = " | ".join(r[3] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql))
    assert "SEARCH p USING INDEX lifecycles_peer" in got and "SEARCH me USING INTEGER PRIMARY KEY" in got, got


def test_a_life_the_store_never_returned_has_no_peer(store):
    server = life(100, start=1003.0001, states=SERVER_CLOSE, lport=8080, rport=40003, role="passive")
    assert store.peer(read(server)) is None, "its addresses are the stored row's, and it has none"
    store.write([server], OFFSET_NS)
    assert store.peer(store.get(100)).id == 3


@pytest.mark.parametrize("started, id_", [(1000.5, 7), (1.7e9, 2**62), (0, 1)])
def test_a_cursor_comes_back_as_it_was_handed_out(started, id_):
    key = "0123456789abcdef"
    assert query.decode_cursor(query.encode_cursor(key, started, id_), key) == (float(started), id_)


@pytest.mark.parametrize("payload", [
    b'[1,"k",Infinity,1]',  # no start
    b'[1,"k",1.0,true]',  # no id
    b'[1,"k",1.0,1.5]',
    b'[2,"k",1.0,1]',  # another version's
    b'{"started":1.0}',
])
def test_a_cursor_with_a_bad_position_is_refused(payload):
    cursor = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    with pytest.raises(ValueError, match="^cursor: not a cursor"):
        query.decode_cursor(cursor, "k")
