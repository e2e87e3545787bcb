"""The timeline store: upserts, every filter, pages walked by cursor, retention, peers, restarts."""

from __future__ import annotations

import base64
import inspect
import math
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tracer.config import ConfigError, load
from tracer.core.lifecycle import Span, from_raw
from tracer.store import LifecycleStore, StoreError
from tracer.store.sqlite import SqliteStore

from lives import CLIENT_CLOSE, OFFSET_NS, SERVER_CLOSE, life, read  # tests/unit: lives as the tracker hands them

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "timeline" / "timeline.db"


@pytest.fixture
def store(path: Path):
    s = SqliteStore(path, retention_s=3600, retention_bytes=1 << 30)
    yield s
    s.close()


def ids(page) -> list[int]:
    return [s.id for s in page.sockets]


def test_the_sqlite_store_is_a_lifecycle_store(store):
    methods = [name for name in vars(LifecycleStore) if not name.startswith("_")]
    assert methods and all(callable(getattr(store, m)) for m in methods)
    for name in methods:  # with the same parameters, so a caller of the Protocol can call it
        declared, real = inspect.signature(getattr(LifecycleStore, name)), inspect.signature(getattr(SqliteStore, name))
        assert list(real.parameters.items()) == list(declared.parameters.items()), name


def test_the_protocol_declares_what_the_daemon_and_the_web_call():
    assert sorted(name for name in vars(LifecycleStore) if not name.startswith("_")) == [
        "close", "close_stale", "get", "next_id", "open_lives", "peer", "query", "retain", "stats", "write"]


@pytest.mark.parametrize("record", [
    life(1),
    life(2, open=True),
    life(3, laddr="2001:db8::1", raddr="2001:db8::2", netns=4026531840),
    life(4, laddr="::ffff:10.0.0.1", raddr="::ffff:10.0.0.2", family="ipv6"),  # kept as written
    life(5, pid=None, comm=None, role="unknown", port=0),
    life(6, start=1700000000.123456, states=(("LISTEN", 86400.000001),), rport=0, role="listener"),
], ids=lambda r: str(r.id))
def test_a_record_comes_back_as_it_was_written(store, record):
    store.write([record], OFFSET_NS)
    assert store.get(record.id) == read(record)
    assert store.get(record.id).to_json() == read(record).to_json()


def test_get_unknown_id_is_none(store):
    assert store.get(99) is None


# Each case: batches of (id, open, how many spans) written in order; what stays.
@pytest.mark.parametrize("batches, expected_open, expected_spans", [
    ([[(1, True, 2)], [(1, True, 3)]], True, 3),  # an open record is written again as it changes
    ([[(1, True, 2)], [(1, False, 5)]], False, 5),  # and finally closed
    ([[(1, False, 5)], [(1, True, 3)]], False, 5),  # a late open copy never reopens a closed one
    ([[(1, True, 2), (1, True, 3)]], True, 3),  # within one batch the last write wins
    ([[(1, False, 5), (1, True, 3)]], False, 5),  # and closed stays closed there too
    ([[(1, False, 4)], [(1, False, 5)]], False, 5),  # a closed record written again: the last one
])
def test_upsert(store, batches, expected_open, expected_spans):
    for batch in batches:
        store.write([life(i, states=CLIENT_CLOSE[:n], open=o) for i, o, n in batch], OFFSET_NS)
    got = store.get(1)
    assert (got.open, len(got.states)) == (expected_open, expected_spans)
    assert store.stats()["rows"] == 1


def test_an_open_record_whose_port_is_filled_in_later_is_found_by_it(store):
    store.write([life(1, lport=0, open=True, states=CLIENT_CLOSE[:1], laddr="0.0.0.0")], OFFSET_NS)
    store.write([life(1, lport=40001, open=True, states=CLIENT_CLOSE[:2])], OFFSET_NS)
    assert store.get(1).lport == 40001
    assert ids(store.query(addr="127.0.0.1")) == [1]
    assert ids(store.query(addr="0.0.0.0")) == []


def test_times_are_kept_to_the_microsecond(store):
    store.write([life(1, start=1731000000.000001, states=(("ESTABLISHED", 0.000001), ("CLOSE_WAIT", 1e-6)))],
                OFFSET_NS)
    spans = store.get(1).states
    assert [(s.since, s.until) for s in spans] == [(1731000000.000001, 1731000000.000002),
                                                   (1731000000.000002, 1731000000.000003)]


@pytest.fixture
def filled(store):
    """A small host's day: clients of two services, a server side, IPv6 and a mapped address."""
    store.write([
        life(1, start=100, rport=80),  # client of :80, 100 .. 161.5006
        life(2, start=200, rport=443, raddr="10.0.0.9", laddr="10.0.0.1"),
        life(3, start=300, states=SERVER_CLOSE, laddr="10.0.0.1", lport=80, raddr="10.0.0.7", rport=50000,
             role="passive", port=80),  # server side: LAST_ACK
        life(4, start=400, rport=80, open=True, states=CLIENT_CLOSE[:2]),  # open, ESTABLISHED since 400.0003
        life(5, start=500, rport=5432, laddr="2001:db8::1", raddr="2001:db8::5"),
        life(6, start=600, rport=80, laddr="::ffff:10.0.0.1", raddr="::ffff:10.0.0.8", family="ipv6"),
    ], OFFSET_NS)
    return store


@pytest.mark.parametrize("filters, expected", [
    ({}, [1, 2, 3, 4, 5, 6]),
    ({"port": 80}, [1, 3, 4, 6]),
    ({"port": 443}, [2]),
    ({"port": 9}, []),
    ({"state": "LAST_ACK"}, [3]),
    ({"state": "time-wait"}, [1, 2, 5, 6]),
    ({"state": "TCP_ESTABLISHED"}, [1, 2, 3, 4, 5, 6]),
    ({"state": "CLOSE_WAIT"}, [3]),
    ({"state": "FIN_WAIT1"}, [1, 2, 5, 6]),  # not 4: it has not got there
    ({"addr": "10.0.0.1"}, [2, 3, 6]),  # local end, IPv4-mapped 6 included
    ({"addr": "::ffff:10.0.0.1"}, [2, 3, 6]),
    ({"addr": "10.0.0.7"}, [3]),  # remote end
    ({"addr": "::FFFF:10.0.0.8"}, [6]),
    ({"addr": "2001:db8:0::5"}, [5]),  # IPv6 in any spelling
    ({"addr": "10.9.9.9"}, []),
    ({"since": 350}, [4, 5, 6]),  # 1..3 ended before 350; 4 is open
    ({"since": 261.5006}, [2, 3, 4, 5, 6]),  # 2 ends at exactly that time: touching is overlapping
    ({"until": 300}, [1, 2, 3]),  # started by 300 (3 starts at exactly 300)
    ({"since": 250, "until": 450}, [2, 3, 4]),
    ({"since": 10_000}, [4]),  # the open one lasts for ever
    ({"since": 10, "until": 20}, []),
    ({"port": 80, "state": "ESTABLISHED", "since": 350}, [4, 6]),
    ({"port": 80, "addr": "10.0.0.1"}, [3, 6]),
    ({"state": "LAST_ACK", "addr": "10.0.0.1", "until": 300, "port": 80}, [3]),
])
def test_query_filters(filled, filters, expected):
    page = filled.query(**filters)
    assert ids(page) == expected
    assert page.total == len(expected)
    assert page.next is None


def test_total_counts_every_match_not_only_the_page(filled):
    page = filled.query(port=80, limit=2)
    assert (ids(page), page.total) == ([1, 3], 4)
    assert page.next is not None
    second = filled.query(port=80, limit=2, cursor=page.next)
    assert (ids(second), second.total, second.next) == ([4, 6], 4, None)


@pytest.mark.parametrize("limit", [1, 3, 7, 50, 1000])
@pytest.mark.parametrize("filters", [{}, {"port": 80}, {"state": "LAST_ACK"}, {"addr": "10.0.0.1"}])
def test_pages_walk_every_record_once_in_order(store, limit, filters):
    # Many share a start time: the id breaks the tie, and the cursor must not skip any.
    lives = []
    for i in range(1, 121):
        passive = i % 3 == 0
        lives.append(life(i, start=1000 + i // 10, states=SERVER_CLOSE if passive else CLIENT_CLOSE,
                            rport=80 if i % 2 else 443, laddr="10.0.0.1" if i % 4 else "127.0.0.1",
                            open=i % 5 == 0 and not passive))
    store.write(lives[60:] + lives[:60], OFFSET_NS)  # the order written does not matter
    records = [read(r) for r in lives]
    expected = [r.id for r in sorted(records, key=lambda r: (r.started, r.id))
                if ("port" not in filters or r.service_port == filters["port"])
                and ("state" not in filters or any(s.state == filters["state"] for s in r.states))
                and ("addr" not in filters or filters["addr"] in (r.laddr, r.raddr))]
    seen, cursor, pages = [], None, 0
    while True:
        page = store.query(**filters, limit=limit, cursor=cursor)
        assert page.total == len(expected)
        assert len(page.sockets) <= limit
        seen += ids(page)
        pages += 1
        cursor = page.next
        if cursor is None:
            break
    assert seen == expected
    assert pages == max(1, math.ceil(len(expected) / limit))


def test_a_page_goes_on_where_the_last_stopped_while_records_are_added(store):
    store.write([life(i, start=100 + i) for i in range(1, 11)], OFFSET_NS)
    first = store.query(limit=5)
    store.write([life(i, start=100 + i) for i in range(11, 16)], OFFSET_NS)
    second = store.query(limit=100, cursor=first.next)
    assert ids(second) == list(range(6, 16))


def other_query_cursor(store: SqliteStore) -> str:
    store.write([life(i, start=100 + i) for i in range(1, 4)], OFFSET_NS)
    return store.query(port=8080, limit=1).next


@pytest.mark.parametrize("kwargs, message", [
    ({"port": -1}, "port"),
    ({"port": 65536}, "port"),
    ({"port": "80"}, "port"),
    ({"state": "BOGUS"}, "state: unknown TCP state 'BOGUS'"),
    ({"addr": "example.com"}, "addr: 'example.com' is not an IPv4 or IPv6 address"),
    ({"addr": "10.0.0.256"}, "addr"),
    ({"since": 5.0, "until": 4.0}, "since (5.0) is after until (4.0)"),
    ({"since": math.nan}, "since"),
    ({"until": math.inf}, "until"),
    ({"limit": 0}, "limit: 0 is not a number from 1 to 1000"),
    ({"limit": 1001}, "limit"),
    ({"limit": True}, "limit"),
    ({"cursor": "garbage!"}, "cursor: not a cursor this API handed out"),
    ({"cursor": "W10"}, "cursor: not a cursor"),  # base64 of []
    ({"cursor": ""}, "cursor: not a cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'[1,"abc",1.0,1]').decode()},
     "cursor: it belongs to a query with other filters"),
    ({"port": 80, "cursor": other_query_cursor}, "cursor: it belongs to a query with other filters"),
])
def test_bad_query_arguments_raise_value_error_naming_them(store, kwargs, message):
    kwargs = {k: v(store) if callable(v) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        store.query(**kwargs)


def test_a_cursor_stays_good_with_another_limit_and_another_spelling_of_the_filters(store):
    store.write([life(i, start=100 + i, laddr="10.0.0.1") for i in range(1, 6)], OFFSET_NS)
    first = store.query(state="TIME_WAIT", addr="10.0.0.1", limit=2)
    rest = store.query(state="time-wait", addr="::ffff:10.0.0.1", limit=10, cursor=first.next)
    assert ids(rest) == [3, 4, 5]


def test_next_id_is_above_every_id_ever_stored(store, path):
    assert store.next_id() == 1
    store.write([life(7), life(3)], OFFSET_NS)
    assert store.next_id() == 8
    store.retain(now=1e12)  # everything ended long ago: deleted
    assert store.stats()["rows"] == 0
    assert store.next_id() == 8, "ids are never handed out twice, not even after retention"


def test_close_stale_closes_what_a_previous_run_left_open(store):
    store.write([
        life(1, start=100, open=True, states=CLIENT_CLOSE[:2]),  # in ESTABLISHED since 100.0003
        life(2, start=100),  # closed already
        life(3, start=200, open=True, states=CLIENT_CLOSE),  # in TIME_WAIT since ~201.5
        life(4, start=900, open=True, states=CLIENT_CLOSE[:1]),  # its state began after the stop
    ], OFFSET_NS)
    before = store.get(2)
    assert store.close_stale(ended_at=500.0) == 3
    assert store.close_stale(ended_at=600.0) == 0
    one, three, four = store.get(1), store.get(3), store.get(4)
    assert not (one.open or three.open or four.open)
    assert one.states[-1] == Span("ESTABLISHED", 100.0003, 500.0)
    assert one.ended == 500.0 and three.ended == 500.0
    assert four.states[-1].until == four.states[-1].since == 900.0  # never before the state began
    assert store.get(2) == before
    assert ids(store.query(since=550)) == [4]  # ended now: no longer open for ever


def test_retention_by_age_keeps_open_ones_whatever_their_age(path):
    store = SqliteStore(path, retention_s=3600, retention_bytes=1 << 30)
    day = 86400.0
    store.write([
        life(1, start=0),  # ended ~61.5: old
        life(2, start=0, open=True),  # open since the start: kept
        life(3, start=day - 3700),  # ended 3638.5 s before now: old
        life(4, start=day - 1000),  # ended recently
        life(5, start=0, states=(("ESTABLISHED", day - 3000),)),  # started long ago, ended recently: kept
    ], OFFSET_NS)
    assert store.retain(now=day) == 2
    assert ids(store.query()) == [2, 5, 4]
    assert store.retain(now=day) == 0
    assert store.stats()["deleted"] == 2
    store.close()


def test_retention_by_size_deletes_the_oldest_ended_and_gives_the_space_back(path):
    limit = 512 * 1024
    store = SqliteStore(path, retention_s=1e9, retention_bytes=limit)
    store.write([life(1, start=0, open=True)], OFFSET_NS)  # open: never deleted
    for b in range(20):
        store.write([life(i, start=10 + i, laddr=f"10.0.{i % 256}.{i // 256 % 256}")
                     for i in range(2 + b * 500, 2 + (b + 1) * 500)], OFFSET_NS)
    assert path.stat().st_size + (path.parent / (path.name + "-wal")).stat().st_size > limit
    deleted = store.retain(now=1e6)
    assert deleted > 0
    assert path.stat().st_size <= limit, "the file shrank below the limit"
    rows = store.stats()["rows"]
    assert rows == 10_001 - deleted
    left = [s.id for s in store.query(limit=1000).sockets]
    assert left[0] == 1, "the open one stays"
    assert left[1:] == list(range(10_001 - rows + 2, 10_001 - rows + 2 + len(left) - 1)), "the oldest went"
    assert store.retain(now=1e6) == 0, "below the limit again, nothing more goes"
    store.close()


def test_retention_by_size_never_deletes_open_ones(path):
    store = SqliteStore(path, retention_s=1e9, retention_bytes=64 * 1024)
    store.write([life(i, start=i, open=True) for i in range(1, 2001)], OFFSET_NS)
    assert store.retain(now=1e6) == 0
    assert store.stats()["rows"] == 2000
    store.close()


def test_the_store_survives_a_restart(path):
    store = SqliteStore(path, retention_s=3600, retention_bytes=1 << 30)
    records = [life(i, start=100 + i, open=i % 2 == 0) for i in range(1, 50)]
    store.write(records, OFFSET_NS)
    before = store.query(limit=1000)
    store.close()
    again = SqliteStore(path, retention_s=3600, retention_bytes=1 << 30)
    assert again.query(limit=1000) == before
    assert [again.get(r.id) for r in records] == [read(r) for r in records]
    assert again.next_id() == 50
    assert again.stats()["rows"] == 49
    assert again.close_stale(ended_at=1000.0) == 24
    again.close()


def test_a_committed_batch_survives_a_crash(path):
    """A process that wrote a batch and was then killed, without closing anything."""
    code = (f"import os, signal, sys; sys.path[:0] = {[str(ROOT), str(Path(__file__).parent)]!r}\n"
            "from lives import OFFSET_NS, life\n"
            "from tracer.store.sqlite import SqliteStore\n"
            f"store = SqliteStore({str(path)!r}, 3600, 1 << 30)\n"
            "store.write([life(1), life(2, open=True)], OFFSET_NS)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = SqliteStore(path, 3600, 1 << 30)
    assert [again.get(1), again.get(2)] == [read(life(1)), read(life(2, open=True))]
    assert again.next_id() == 3
    assert again.close_stale(ended_at=2000.0) == 1, "what the killed run left open is closed at the next start"
    again.close()


def peer_of(store: SqliteStore, raw):
    """The peer as the API asks for it: of the socket the store returned for an id."""
    return store.peer(store.get(raw.id))


def pair(client_id: int, server_id: int, start: float, cport: int, netns=(None, None), skew: float = 0.0001):
    client = life(client_id, start=start, lport=cport, rport=8080, netns=netns[0])
    server = life(server_id, start=start + skew, states=SERVER_CLOSE, lport=8080, raddr="127.0.0.1", rport=cport,
                  role="passive", port=8080, netns=netns[1])
    return client, server


@pytest.mark.parametrize("netns, found", [
    ((None, None), True),
    ((4026531840, None), True),  # one namespace unknown
    ((4026531840, 4026531840), True),
    ((4026531840, 4026532000), False),  # two hosts that happen to use the same 4-tuple
])
def test_peer_is_the_other_end_on_this_host(store, netns, found):
    client, server = pair(1, 2, 1000.0, 40001, netns)
    store.write([client, server, life(3, start=1000.0, lport=40002, rport=8080)], OFFSET_NS)
    assert (peer_of(store, client) == read(server)) is found
    assert (peer_of(store, server) == read(client)) is found


def test_peer_prefers_the_overlapping_and_the_closest_start(store):
    old_client, old_server = pair(1, 2, 1000.0, 40001)  # the same 4-tuple, an earlier connection
    client, server = pair(3, 4, 1100.0, 40001, skew=0.2)
    near = life(5, start=1100.05, states=SERVER_CLOSE, lport=8080, rport=40001, role="passive", port=8080)
    store.write([old_client, old_server, client, server], OFFSET_NS)
    assert peer_of(store, client) == read(server)
    assert peer_of(store, old_client) == read(old_server)
    store.write([near], OFFSET_NS)
    assert peer_of(store, client).id == 5, "two ends overlap: the one that started closest"


@pytest.mark.parametrize("record", [
    life(10, rport=0, role="listener", states=(("LISTEN", 10.0),)),  # a listener has no peer
    life(11, lport=0, open=True, states=CLIENT_CLOSE[:1]),  # a connect() not bound yet
    life(12, start=1000.0, lport=40009),  # nobody on the other end
])
def test_no_peer(store, record):
    store.write([record, life(13, start=1000.0, states=SERVER_CLOSE, lport=8080, rport=40001, role="passive")],
                OFFSET_NS)
    assert peer_of(store, record) is None


def test_peer_matches_an_ipv4_mapped_end(store):
    client = life(1, start=50.0, lport=40001, rport=8080)
    server = life(2, start=50.0001, states=SERVER_CLOSE, laddr="::ffff:127.0.0.1", lport=8080,
                  raddr="::ffff:127.0.0.1", rport=40001, role="passive", port=8080, family="ipv6")
    store.write([client, server], OFFSET_NS)
    assert peer_of(store, client) == read(server) and peer_of(store, server) == read(client)


def test_a_reader_thread_queries_while_the_writer_writes(store):
    errors: list[BaseException] = []
    totals: list[int] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                page = store.query(port=8080, limit=50)
                totals.append(page.total)
                assert len(page.sockets) == min(50, page.total)
                if page.sockets:
                    assert store.get(page.sockets[0].id) is not None
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for b in range(40):
            store.write([life(i, start=i, open=i % 2 == 0) for i in range(b * 100 + 1, (b + 1) * 100 + 1)],
                        OFFSET_NS)
            store.write([life(i, start=i) for i in range(b * 100 + 1, (b + 1) * 100 + 1)], OFFSET_NS)  # closed now
    finally:
        done.set()
        reader.join(30)
    assert not errors, errors
    assert totals == sorted(totals), "each read sees a whole batch or none of it"
    assert store.query().total == 4000


def under_a_file(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    (path.parent / "file").write_text("x")
    return path.parent / "file" / "timeline.db"


def a_directory(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def not_sqlite(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not SQLite" * 100)
    return path


@pytest.mark.parametrize("make, why", [
    (under_a_file, "file is not a directory"),
    (a_directory, "unable to open database file"),
    (not_sqlite, "file is not a database"),
])
def test_a_path_that_cannot_be_opened_is_one_line_saying_what_to_do(path, make, why):
    target = make(path)
    with pytest.raises(StoreError) as info:
        SqliteStore(target, 3600, 1 << 30)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot open the timeline store {target}: ")
    assert why in message and "--db" in message


def test_a_store_from_a_newer_version_is_refused(path):
    SqliteStore(path, 3600, 1 << 30).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="written by a newer tcpstate-tracer"):
        SqliteStore(path, 3600, 1 << 30)


def test_a_failed_batch_is_rolled_back_counted_and_raised(store):
    store.write([life(1)], OFFSET_NS)
    store._conn.execute("PRAGMA query_only = 1")  # as a disk gone read-only would refuse it
    with pytest.raises(StoreError, match=r"^cannot write 2 records to the timeline store .*readonly"):
        store.write([life(2), life(3)], OFFSET_NS)
    store._conn.execute("PRAGMA query_only = 0")
    assert store.stats()["dropped"] == 2
    store.write([life(4)], OFFSET_NS)
    assert ids(store.query()) == [1, 4]
    assert store.stats()["rows"] == 2


def test_a_record_without_spans_is_dropped_and_the_rest_written(store, caplog):
    store.write([life(1), life(2)._replace(history=()), life(3)], OFFSET_NS)
    assert ids(store.query()) == [1, 3]
    assert store.stats()["dropped"] == 1
    assert "record 2 cannot be stored" in caplog.text


def test_stats(store):
    assert store.stats() == {"rows": 0, "bytes": store.stats()["bytes"], "writes": 0, "dropped": 0, "deleted": 0}
    store.write([life(1, open=True), life(2)], OFFSET_NS)
    store.write([life(1)], OFFSET_NS)
    stats = store.stats()
    assert (stats["rows"], stats["writes"]) == (2, 3)
    assert stats["bytes"] > 0


def test_a_closed_store_says_so(path):
    store = SqliteStore(path, 3600, 1 << 30)
    store.close()
    store.close()  # twice is harmless
    for call in (lambda: store.write([life(1)], OFFSET_NS), lambda: store.query(), lambda: store.get(1), store.next_id):
        with pytest.raises(StoreError, match="is closed"):
            call()


# The settings the store is built from (tracer/config.py: db, retention, retention.size).

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1h30m", 5400),
    ("1y", 365 * 86400), ("1500ms", 1.5), (" 7d ", 604800),
])
def test_retention_takes_prometheus_durations(text, seconds):
    config = load(flags={"retention": text}, environ={})
    assert config.retention == seconds and str(config.retention) == text.strip()


@pytest.mark.parametrize("text, size", [
    ("1GiB", 2**30), ("512MiB", 512 * 2**20), ("512MB", 512 * 10**6), ("1.5GiB", 3 * 2**29),
    ("1000000000", 10**9), ("2 gib", 2 * 2**30),
])
def test_retention_size_takes_bytes_with_or_without_a_unit(text, size):
    config = load(flags={"retention_size": text}, environ={})
    assert config.retention_size == size and str(config.retention_size) == text


@pytest.mark.parametrize("attr, flag, text, problem", [
    ("retention", "--retention", "7", "is not a duration: a number and a unit, as in 90s"),
    ("retention", "--retention", "1.5h", "is not a duration"),
    ("retention", "--retention", "soon", "is not a duration"),
    ("retention", "--retention", "0s", "must be greater than 0"),
    ("retention_size", "--retention.size", "lots", "is not a size"),
    ("retention_size", "--retention.size", "-1GiB", "is not a size"),
    ("retention_size", "--retention.size", "1PB", "is not a size"),
    ("retention_size", "--retention.size", "1000", "is less than 1MiB"),
])
def test_bad_retention_settings_are_one_plain_problem_each(attr, flag, text, problem):
    with pytest.raises(ConfigError) as info:
        load(flags={attr: text}, environ={})
    (got,) = info.value.problems
    name = attr.replace("_", ".")
    assert got.startswith(f"{name} (flag {flag}): ") and problem in got and text in got


def test_store_settings_from_a_file_and_their_defaults(tmp_path):
    defaults = load(flags={}, environ={})
    assert (defaults.db, defaults.retention, defaults.retention_size) == (
        Path("/var/lib/tcpstate-tracer/timeline.db"), 7 * 86400, 2**30)
    file = tmp_path / "tracer.yaml"
    file.write_text("db: /srv/t.db\nretention: 12h\nretention.size: 512MiB\n")  # both spellings side by side
    config = load(flags={"config_file": str(file)}, environ={"TCPSTATE_TRACER_RETENTION": "1d"})
    assert (config.db, config.retention, config.retention_size) == (Path("/srv/t.db"), 86400, 512 * 2**20)
    file.write_text("retention:\n  size: 2GiB\n")
    assert load(flags={"config_file": str(file)}, environ={}).retention_size == 2 * 2**30


def test_what_is_stored_is_the_lifecycle_of_the_raw_life_to_the_microsecond(store) -> None:
    """Times below the microsecond, the kernel's raw fields: what the store gives back
    equals lifecycle.from_raw of the same life (what the tracker's drain_lifecycles
    makes), its times within the microsecond the store floors them to, and the
    filters on states and addresses find it."""
    from tracer.core.states import TcpState as S

    def us(t: float) -> int:
        return round(t * 1e6)

    offset = 1_731_000_000_123_456_789
    loop4 = bytes([10, 0, 0, 1]) + bytes(12)
    peer6 = bytes.fromhex("20010db8000000000000000000000001")
    comm = b"curl".ljust(16, b"\0")
    lives = [
        (1, 0, 2, loop4, 40000, loop4, 443, 1, 443, 99, comm,
         (S.SYN_SENT.value, 5_000_000_001, S.ESTABLISHED.value, 5_000_250_999, S.FIN_WAIT1.value, 5_500_000_000,
          S.TIME_WAIT.value, 6_000_000_500), None, 2, (0, 3, S.FIN_WAIT1.value, 5_700_000_001)),  # shutdown_wr
        (2, 4026531840, 10, peer6, 8080, peer6, 51000, 2, 8080, 0, bytes(16),
         (S.SYN_RECV.value, 7_000_000_000, S.CLOSE_WAIT.value, 7_100_000_000), 9_000_000_999, 5,  # reset_received
         (4, 3, S.CLOSE_WAIT.value, 7_200_000_000, 1, S.CLOSE_WAIT.value, 8_999_999_999)),
    ]
    store.write(lives, offset)
    for r in lives:
        got, want = store.get(r[0]), from_raw(r, lambda ns: (ns + offset) / 1e9)
        times = ("states", "marks", "one_way")
        assert {**got.to_json(), **dict.fromkeys(times)} == {**want.to_json(), **dict.fromkeys(times)}
        assert [(m.kind, m.state) for m in got.marks] == [(m.kind, m.state) for m in want.marks]
        assert all(abs(us(a.at) - us(b.at)) <= 1 for a, b in zip(got.marks, want.marks, strict=True))
        assert got.one_way is not None and abs(us(got.one_way[0]) - us(want.one_way[0])) <= 1
        assert [s.state for s in got.states] == [s.state for s in want.states]
        for a, b in zip(got.states, want.states, strict=True):
            assert abs(us(a.since) - us(b.since)) <= 1 and (a.until is None) == (b.until is None)
            assert a.until is None or abs(us(a.until) - us(b.until)) <= 1
        assert (got.ended is None) == (want.ended is None)
        assert got.ended is None or abs(us(got.ended) - us(want.ended)) <= 2
        assert r[0] in ids(store.query(addr=got.laddr)) and r[0] in ids(store.query(addr=got.raddr))
        for s in got.states:
            assert r[0] in ids(store.query(state=s.state))
    client, server = store.get(1), store.get(2)
    assert (client.closer, client.how, server.closer, server.how) == ("local", "shutdown_wr", "peer", "reset_received")
    assert abs(us(client.one_way[1] - client.one_way[0]) - 500_000) <= 2  # FIN_WAIT1 to TIME_WAIT
    assert [m.kind for m in server.marks] == ["retransmit", "reset_received"] and server.marks_dropped == 4
