"""Bind conflicts: the remedy that fits each holder, the daemon's recorder (namespaces
pinned or inferred, newest first, counted), the API and its contract, the counter."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
from openapi_schema_validator import OAS30Validator
from prometheus_client import CollectorRegistry

from tracer.core.calls import Call
from tracer.core.clock import FakeClock
from tracer.core.conflicts import Holders, ListenerHolder, remedy
from tracer.core.ports import PortLabels
from tracer.daemon.conflicts import BindConflicts
from tracer.metrics.conflicts import ConflictFamilies
from tracer.web import create_app
from tracer.web.sockets_api import openapi_document


def call(port: int = 8080, reuseaddr: bool = False, reuseport: bool = False, pid: int | None = None,
         ts_ns: int = 5_000_000_000) -> Call:
    return Call(ts_ns, os.getpid() if pid is None else pid, 1, 98, 3, socket.AF_INET, "0.0.0.0", port, "bind",
                reuseaddr, reuseport, "server")


TIME_WAIT = Holders(time_wait=3, time_wait_left_s=41.6)
LISTENER = Holders(listeners=(ListenerHolder("0.0.0.0", 4242, "nginx"),))
OTHERS = Holders(others={"ESTABLISHED": 2, "CLOSE_WAIT": 1})


def test_time_wait_holders_call_for_so_reuseaddr_in_both_servers_or_the_wait():
    text = remedy(8080, TIME_WAIT)
    assert text.startswith("3 connection(s) in TIME_WAIT hold port 8080, the last for 42 s more")
    assert "SO_REUSEADDR before bind() in this server and in the one that accepted them" in text
    assert text.endswith("or wait 42 s")


def test_time_wait_holders_of_a_socket_that_set_so_reuseaddr_name_the_old_server():
    text = remedy(8080, TIME_WAIT, reuseaddr=True)
    assert "this socket set SO_REUSEADDR, the server that accepted them did not" in text


def test_a_listener_is_named_with_its_owner_and_the_so_reuseport_rule():
    assert TIME_WAIT.holder == "time_wait" and LISTENER.holder == "listener"
    text = remedy(8080, LISTENER)
    assert text.startswith("port 8080 is listened on by nginx (pid 4242) on 0.0.0.0: stop that server first")
    assert "both set SO_REUSEPORT before bind() and run as the same user" in text
    assert "this socket set SO_REUSEPORT" in remedy(8080, LISTENER, reuseport=True)


def test_other_states_are_counted_and_close_wait_explained():
    assert OTHERS.holder == "other"
    text = remedy(8080, OTHERS)
    assert "(1 CLOSE_WAIT, 2 ESTABLISHED)" in text and "never closed" in text


def test_nothing_found_says_so():
    assert Holders().holder == "none"
    assert "nothing held port 8080" in remedy(8080, Holders())


class Calls:
    """A source of refused calls: what the program lost."""

    def __init__(self, lost: int = 0) -> None:
        self.lost = lost

    def read_calls(self, timeout_s: float) -> list[Call]:
        return []

    def calls_lost(self) -> int:
        return self.lost


class Reads:
    """The holders reader: what it is asked, and an answer by namespace."""

    def __init__(self, found: dict[int, Holders]) -> None:
        self.found = found
        self.asked: list[tuple[int, dict | None]] = []

    def __call__(self, port: int, netns: dict[int, str] | None):
        self.asked.append((port, netns))
        if netns is None:
            return dict(self.found), []
        return {ino: h for ino, h in self.found.items() if ino in netns}, []


def test_a_living_caller_s_namespace_is_pinned_and_read_alone():
    own = os.stat("/proc/self/ns/net").st_ino
    reads = Reads({own: TIME_WAIT, own + 1: LISTENER})
    conflicts = BindConflicts(Calls(), FakeClock(), reads)
    conflicts.handle([call()])
    (c,) = conflicts.recent()
    (port, netns), = reads.asked
    assert port == 8080 and list(netns) == [own] and netns[own].startswith("/proc/self/fd/")
    assert (c.netns, c.netns_inferred, c.holder) == (own, False, "time_wait")
    assert conflicts.counts() == {(8080, "time_wait"): 1}
    # The pinned descriptor is closed once the conflict is explained.
    assert not os.path.exists(netns[own])


def test_a_caller_gone_is_placed_where_the_port_was_held_when_one_namespace_held_it():
    gone = 2**22 + 12345  # above pid_max's default: no such process
    one = BindConflicts(Calls(), FakeClock(), Reads({7: TIME_WAIT}))
    one.handle([call(pid=gone)])
    assert (one.recent()[0].netns, one.recent()[0].netns_inferred) == (7, True)
    two = BindConflicts(Calls(), FakeClock(), Reads({7: TIME_WAIT, 8: LISTENER}))
    two.handle([call(pid=gone)])
    c = two.recent()[0]
    assert (c.netns, c.holder) == (None, "none")


def test_recent_is_newest_first_bounded_and_by_port():
    conflicts = BindConflicts(Calls(), FakeClock(), Reads({}), keep=3)
    for n, port in enumerate([80, 81, 80, 82, 80]):
        conflicts.explain(call(port, ts_ns=n * 10**9), None)
    assert [c.call.port for c in conflicts.recent()] == [80, 82, 80]
    assert [c.time for c in conflicts.recent(port=80)] == [1_700_000_004.0, 1_700_000_002.0]
    assert len(conflicts.recent(limit=1)) == 1
    assert conflicts.counts() == {(80, "none"): 3, (81, "none"): 1, (82, "none"): 1}  # counts are not bounded


def test_every_pin_is_closed_once_its_calls_are_explained_even_when_one_fails():
    def reads(port: int, netns):
        if port == 81:
            raise OSError("the table could not be read")
        return {}, []

    conflicts = BindConflicts(Calls(), FakeClock(), reads)
    fds_before = len(os.listdir("/proc/self/fd"))
    conflicts.handle([call(80) for _ in range(5)])
    with pytest.raises(OSError):
        conflicts.handle([call(80), call(81)])
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert len(conflicts.recent()) == 6


@pytest.fixture
def feed() -> BindConflicts:
    """A conflict on 8080 with TIME_WAIT holders (the caller gone, one namespace held it),
    then one on 9090 where nothing was found."""
    held = {8080: {4026531840: TIME_WAIT}, 9090: {}}
    conflicts = BindConflicts(Calls(lost=2), FakeClock(wall_start=0.0), lambda port, netns: (held[port], []))
    conflicts.explain(call(8080, ts_ns=1_000_000_000), None)
    conflicts.explain(call(9090, reuseaddr=True, ts_ns=2_000_000_000), None)
    return conflicts


@pytest.fixture
def client(feed):
    app = create_app(CollectorRegistry(), SimpleNamespace(), SimpleNamespace(report=None), FakeClock(),
                     conflicts=feed)
    return app.test_client()


def test_the_api_answers_newest_first_in_the_documented_shape(client):
    spec = openapi_document()
    resp = client.get("/api/v1/bind-conflicts")
    assert resp.status_code == 200
    body = resp.get_json()
    OAS30Validator({"$ref": "#/components/schemas/BindConflicts", "components": spec["components"]}).validate(body)
    assert [c["port"] for c in body["conflicts"]] == [9090, 8080]
    tw = body["conflicts"][1]
    assert tw["holder"] == "time_wait" and tw["holders"]["time_wait"] == 3
    assert tw["holders"]["time_wait_free_at"] == pytest.approx(42.6)
    assert "SO_REUSEADDR" in tw["remedy"]
    assert [c["port"] for c in client.get("/api/v1/bind-conflicts?port=8080").get_json()["conflicts"]] == [8080]
    assert len(client.get("/api/v1/bind-conflicts?limit=1").get_json()["conflicts"]) == 1


@pytest.mark.parametrize("query", ["port=0", "port=http", "limit=0", "limit=100000"])
def test_bad_parameters_are_a_400_naming_them(client, query):
    resp = client.get(f"/api/v1/bind-conflicts?{query}")
    assert resp.status_code == 400
    assert resp.get_json()["error"].startswith(query.split("=")[0] + ":")


def test_the_counter_has_a_series_per_port_and_holder(feed):
    labels = PortLabels(100, range(32768, 61000))
    families = ConflictFamilies(feed, labels)
    snap = families.snapshot()
    labels.decide({p for p, _ in snap}, set())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in families.families(snap) for s in m.samples}
    assert samples == {
        ("tcpstate_bind_conflicts_total", (("holder", "time_wait"), ("port", "8080"))): 1,
        ("tcpstate_bind_conflicts_total", (("holder", "none"), ("port", "9090"))): 1,
        ("tcpstate_bind_conflicts_unexplained_total", ()): 2,
    }


def test_conflicts_and_port_print_as_tables(client):
    import io

    from tracer.console import print_conflicts, print_port

    out = io.StringIO()
    print_conflicts(client.get("/api/v1/bind-conflicts").get_json(), out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TIME", "PORT", "ADDRESS", "PID", "COMM", "NETNS", "OPTS", "HOLDER"]
    row = next(i for i, line in enumerate(lines) if " 8080 " in line)
    assert "time_wait (3)" in lines[row] and "4026531840?" in lines[row]  # inferred: the caller had gone
    assert lines[row + 1].startswith("    3 connection(s) in TIME_WAIT hold port 8080")
    assert "reuseaddr" in next(line for line in lines if " 9090 " in line)
    empty = io.StringIO()
    print_conflicts({"conflicts": []}, empty)
    assert empty.getvalue() == "no bind conflicts since the daemon started\n"
    free = io.StringIO()
    print_port(8080, [], free)
    assert free.getvalue() == "port 8080: free in every network namespace (no TCP socket holds it)\n"


LOOP4 = bytes([127, 0, 0, 1]) + bytes(12)


def test_a_connect_with_no_local_port_is_explained_by_its_sockets_toward_the_destination():
    own = os.stat("/proc/self/ns/net").st_ino
    asked = []

    def toward(daddr, family, dport, netns):
        asked.append((daddr, family, dport, netns))
        return {own: ({"TIME_WAIT": 2}, 41.5)}, []

    ranges = []
    conflicts = BindConflicts(Calls(), FakeClock(), Reads({}), read_toward=toward,
                              read_range=lambda path: ranges.append(path) or (40000, 40001))
    (e,) = conflicts.handle_unbound([(5 * 10**9, os.getpid(), b"curl".ljust(16, b"\0"), 2, LOOP4, 8080)])
    (daddr, family, dport, netns), = asked
    assert (daddr, family, dport, list(netns)) == (LOOP4, 2, 8080, [own]) and ranges == [netns[own]]
    assert (e.netns, e.netns_inferred, e.comm, e.address, e.port) == (own, False, "curl", "127.0.0.1", 8080)
    assert e.toward == {"TIME_WAIT": 2} and e.port_range == (40000, 40001)
    text = e.remedy()
    assert text.startswith("2 connection(s) toward 127.0.0.1:8080 held the local ports of the 2 in "
                           "ip_local_port_range 40000-40001, 2 of them in TIME_WAIT (the first frees in 42 s)")
    assert "tcp_tw_reuse" in text and "ip_local_port_range" in text
    assert conflicts.no_local_port() == [e] and conflicts.no_local_port(port=80) == []
    assert not os.path.exists(netns[own]), "the pin is closed"


def test_a_connect_whose_caller_is_gone_is_placed_where_sockets_went_toward_it():
    gone = 2**22 + 12345
    conflicts = BindConflicts(Calls(), FakeClock(), Reads({}),
                              read_toward=lambda *a: ({7: ({"TIME_WAIT": 1, "ESTABLISHED": 1}, 3.0)}, []),
                              read_range=lambda path: (1, 2))
    (e,) = conflicts.handle_unbound([(0, gone, b"x", 2, LOOP4, 80)])
    assert (e.netns, e.netns_inferred, e.port_range) == (7, True, None)  # the range is read in the caller's only
    nothing = BindConflicts(Calls(), FakeClock(), Reads({}), read_toward=lambda *a: ({}, []))
    (e,) = nothing.handle_unbound([(0, gone, b"x", 2, LOOP4, 80)])
    assert e.netns is None and e.toward == {} and "nothing held one toward it" in e.remedy()


def test_the_no_local_port_api_answers_in_the_documented_shape():
    conflicts = BindConflicts(Calls(), FakeClock(wall_start=0.0), Reads({}),
                              read_toward=lambda *a: ({}, []), read_range=lambda path: None)
    conflicts.handle_unbound([(10**9, 2**22 + 1, b"a", 2, LOOP4, 80), (2 * 10**9, 2**22 + 1, b"b", 2, LOOP4, 81)])
    app = create_app(CollectorRegistry(), SimpleNamespace(), SimpleNamespace(report=None), FakeClock(),
                     conflicts=conflicts)
    client = app.test_client()
    body = client.get("/api/v1/no-local-port").get_json()
    spec = openapi_document()
    OAS30Validator({"$ref": "#/components/schemas/NoLocalPorts", "components": spec["components"]}).validate(body)
    assert [e["port"] for e in body["refused"]] == [81, 80]
    assert [e["port"] for e in client.get("/api/v1/no-local-port?port=80").get_json()["refused"]] == [80]
    bad = client.get("/api/v1/no-local-port?limit=0")
    assert bad.status_code == 400 and bad.get_json()["error"].startswith("limit:")
    import io

    from tracer.console import print_no_local_port

    out = io.StringIO()
    print_no_local_port(body, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["TIME", "DESTINATION", "PID", "COMM", "NETNS", "RANGE", "HELD", "BY"]
    assert "127.0.0.1:81" in lines[1] and lines[2].startswith("    no free local port toward 127.0.0.1:81")
    empty = io.StringIO()
    print_no_local_port({"refused": []}, empty)
    assert empty.getvalue().startswith("no connect() found the local ports used up")
