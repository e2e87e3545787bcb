"""Bad input to the API: every path and parameter validated, an unknown parameter a
400 naming it, never a 5xx; a hand-written list of malformed requests, and several
hundred generated ones (Hypothesis); paging exact while the store is written."""

from __future__ import annotations

import os
import string
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from prometheus_client import CollectorRegistry

from tests.conftest import Healthy, make_event
from tracer.core.clock import FakeClock
from tracer.core.detector import Rules
from tracer.core.states import Role, TcpState as S
from tracer.core.tracker import Tracker
from tracer.store.sqlite import SqliteStore
from tracer.web import create_app
from tracer.web.sockets_api import openapi_document

from lives import OFFSET_NS, SERVER_CLOSE, life  # tests/unit: the store's synthetic lives


class NoConflicts:
    def recent(self, limit=None, port=None):
        return []

    def no_local_port(self, limit=None, port=None):
        return []


class Changes:
    version = 0
    written_at = 0.0


def _lives(first: int, count: int, start: float):
    return [life(first + i, start=start + i, lport=40000 + (first + i) % 20000, rport=8080) for i in range(count)]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from tracer.daemon.stuck import StuckScanner

    store = SqliteStore(Path(tmp_path_factory.mktemp("api")) / "timeline.db", retention_s=3600,
                        retention_bytes=1 << 30)
    store.write(_lives(1, 50, 1000) + [life(51, start=1100, states=SERVER_CLOSE, lport=8080, rport=40001,
                                            role="passive", port=8080)], OFFSET_NS)
    clock = FakeClock(start_ns=10**9)
    tracker = Tracker(60 * 10**9, 100, Rules.build(30, {"CLOSE_WAIT": 5, "LAST_ACK": 5}))
    tracker.apply(make_event(1, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=10**9, sport=8080, dport=50000,
                             service_port=8080, role=Role.PASSIVE))
    tracker.apply(make_event(2, S.CLOSE_WAIT, S.LAST_ACK, ts_ns=10**9, sport=443, dport=50001,
                             service_port=443, role=Role.PASSIVE))
    clock.advance(6)
    scanner = StuckScanner(tracker, clock)
    scanner.scan()
    yield create_app(CollectorRegistry(), Healthy(), scanner, clock, store=store, changes=Changes(),
                     conflicts=NoConflicts())
    store.close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi_document()


def _error_conforms(spec, body) -> None:
    OAS30Validator({"$ref": "#/components/schemas/Error", "components": spec["components"]}).validate(body)


def test_every_api_route_is_in_the_document(app, spec):
    """The document is what the parameter check reads: a route it lacks would take anything."""
    import re

    routes = {re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "{}", r.rule) for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/v1/")}
    documented = {re.sub(r"\{[^{}]+\}", "{}", p) for p in spec["paths"]}
    assert routes == documented


def test_stuck_takes_the_port_and_state_filters_of_sockets(client, spec):
    everything = client.get("/api/v1/stuck").get_json()
    assert everything["total"] == 2
    assert {s["state"] for s in everything["sockets"]} == {"CLOSE_WAIT", "LAST_ACK"}
    one = client.get("/api/v1/stuck?port=8080").get_json()
    assert [(s["service_port"], s["state"]) for s in one["sockets"]] == [(8080, "CLOSE_WAIT")]
    assert one["total"] == 1 and [c["port"] for c in one["counts"]] == [8080]
    assert client.get("/api/v1/stuck?state=last-ack").get_json()["total"] == 1
    assert client.get("/api/v1/stuck?port=443&state=CLOSE_WAIT").get_json()["total"] == 0
    OAS30Validator({"$ref": "#/components/schemas/StuckReport", "components": spec["components"]}).validate(everything)
    for query, name in (("port=abc", "port"), ("state=OPEN", "state"), ("prot=8080", "prot")):
        res = client.get(f"/api/v1/stuck?{query}")
        assert res.status_code == 400 and name in res.get_json()["error"], query


@pytest.mark.parametrize("path", ["/api/v1/sockets", "/api/v1/sockets/1", "/api/v1/stuck", "/api/v1/bind-conflicts",
                                  "/api/v1/no-local-port", "/api/v1/openapi.json", "/api/v1/stream"])
def test_an_unknown_or_repeated_parameter_is_a_400_naming_it(client, spec, path):
    res = client.get(f"{path}?prot=8080")
    assert res.status_code == 400
    body = res.get_json()
    assert body["error"].startswith("unknown parameter 'prot'"), body
    _error_conforms(spec, body)
    if path in ("/api/v1/sockets", "/api/v1/stuck", "/api/v1/bind-conflicts"):
        res = client.get(f"{path}?port=80&port=81")
        assert res.status_code == 400 and res.get_json()["error"] == "port: given more than once"


LONG = "a" * 10_000
MALFORMED = [
    # wrong types
    "/api/v1/sockets?port=http", "/api/v1/sockets?port=80.0", "/api/v1/sockets?port=0x50", "/api/v1/sockets?port=1e3",
    "/api/v1/sockets?port=%20%2080", "/api/v1/sockets?limit=true", "/api/v1/sockets?since=now",
    "/api/v1/sockets?until=1,5", "/api/v1/stuck?port=eighty", "/api/v1/bind-conflicts?limit=all",
    "/api/v1/no-local-port?port=[80]",
    # out of range
    "/api/v1/sockets?port=0", "/api/v1/sockets?port=65536", "/api/v1/sockets?port=-80",
    "/api/v1/sockets?port=99999999999999999999999", "/api/v1/stuck?port=70000", "/api/v1/bind-conflicts?port=0",
    "/api/v1/no-local-port?port=65536", "/api/v1/sockets?since=inf", "/api/v1/sockets?until=-inf",
    "/api/v1/sockets?since=nan", "/api/v1/sockets?since=1e400", "/api/v1/sockets?since=200&until=100",
    "/api/v1/sockets/0", "/api/v1/sockets/-1", "/api/v1/sockets/99999999999999999999999",
    "/api/v1/sockets/9223372036854775808", "/api/v1/sockets/1.5", "/api/v1/sockets/abc", "/api/v1/sockets/999999",
    # unknown states
    "/api/v1/sockets?state=OPEN", "/api/v1/sockets?state=TIME_WAIT2", "/api/v1/stuck?state=ESTABLISHED_",
    "/api/v1/sockets?state=%00", "/api/v1/stuck?state=" + quote("LAST_ACK'--"),
    # huge limits
    "/api/v1/sockets?limit=1001", "/api/v1/sockets?limit=10000000000", "/api/v1/bind-conflicts?limit=1001",
    "/api/v1/no-local-port?limit=0", "/api/v1/sockets?limit=-1",
    # over-long and odd strings
    "/api/v1/sockets?addr=" + LONG, "/api/v1/sockets?cursor=" + LONG, "/api/v1/sockets?state=" + LONG,
    "/api/v1/sockets?" + LONG + "=1", "/api/v1/sockets?addr=%F0%9F%92%A5", "/api/v1/sockets?addr=%FF%FE",
    "/api/v1/sockets?addr=127.0.0.1%0Ajunk", "/api/v1/sockets?addr=::1%25eth0", "/api/v1/sockets?port=%E0%A5%AE%E0%A5%A6",
    # injection attempts
    "/api/v1/sockets?addr=" + quote("1.1.1.1' OR '1'='1"), "/api/v1/sockets?state=" + quote("x; DROP TABLE lifecycles"),
    "/api/v1/sockets?port=" + quote("80 OR 1=1"), "/api/v1/sockets?cursor=" + quote("' UNION SELECT * --"),
    "/api/v1/sockets?addr=" + quote("<script>alert(1)</script>"), "/api/v1/sockets/" + quote("1;DELETE"),
    "/api/v1/sockets/" + quote("../../etc/passwd"), "/api/v1/" + quote("../metrics"),
    # bad cursors
    "/api/v1/sockets?cursor=not-a-cursor", "/api/v1/sockets?cursor=%E2%9C%93", "/api/v1/sockets?cursor=0",
    "/api/v1/sockets?cursor=1000.0:1", "/api/v1/sockets?cursor=eyJ4IjoxfQ", "/api/v1/sockets?cursor=" + "A" * 400,
    # unknown and repeated parameters, unknown paths
    "/api/v1/sockets?prot=8080", "/api/v1/stuck?ports=80", "/api/v1/sockets?limit=1&limit=2",
    "/api/v1/nothing", "/api/v2/sockets", "/api/v1/sockets/1/peer", "/api/v1/sockets/%2F0", "/api/v1//stuck",
]


def test_the_malformed_list_is_long_enough():
    assert len(MALFORMED) >= 50 and len(set(MALFORMED)) == len(MALFORMED)


@pytest.mark.parametrize("url", MALFORMED, ids=[u[:60] for u in MALFORMED])
def test_malformed_requests_are_4xx_with_a_json_error(client, spec, url):
    res = client.get(url)
    assert 400 <= res.status_code < 500, (url, res.status_code)
    body = res.get_json()
    _error_conforms(spec, body)
    assert body["status"] == res.status_code and "Traceback" not in body["error"] and len(body["error"]) < 500


PATHS = ["/api/v1/sockets", "/api/v1/sockets/{id}", "/api/v1/stuck", "/api/v1/bind-conflicts",
         "/api/v1/no-local-port", "/api/v1/openapi.json"]
NAMES = ["port", "state", "addr", "since", "until", "limit", "cursor"]
_values = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["LAST_ACK", "time-wait", "127.0.0.1", "::1", "::ffff:10.0.0.1", "", "8080", "1000.5"]),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)
_params = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(string.ascii_letters + "_[]", min_size=1,
                                                                         max_size=12)), _values), max_size=4)


@settings(max_examples=int(os.environ.get("API_FUZZ_EXAMPLES", "600")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), sid=st.one_of(st.integers(-5, 60).map(str), st.text(max_size=12)),
       params=_params)
def test_generated_requests_never_get_a_5xx(client, spec, path, sid, params):
    url = path.replace("{id}", quote(sid, safe="") or "x")
    res = client.get(url, query_string=params)
    assert res.status_code < 500, (url, params, res.status_code)
    body = res.get_json()
    assert body is not None, (url, params)
    if res.status_code >= 400:
        _error_conforms(spec, body)


def test_paging_visits_every_record_exactly_once_while_records_are_written(tmp_path):
    store = SqliteStore(tmp_path / "timeline.db", retention_s=3600, retention_bytes=1 << 30)
    try:
        store.write(_lives(1, 200, 1000), OFFSET_NS)
        client = create_app(CollectorRegistry(), Healthy(), None, FakeClock(), store=store).test_client()
        seen, url, next_id = [], "/api/v1/sockets?port=8080&limit=17", 201
        while True:
            body = client.get(url).get_json()
            seen += [s["id"] for s in body["sockets"]]
            # Between pages: 5 sockets born later, and 5 born among the ones already paged.
            store.write(_lives(next_id, 5, 5000 + next_id) + _lives(next_id + 5, 5, 1000.5 + len(seen) % 50),
                        OFFSET_NS)
            next_id += 10
            if body["next"] is None:
                break
            url = f"/api/v1/sockets?port=8080&limit=17&cursor={body['next']}"
        assert len(seen) == len(set(seen)), "a socket was listed twice"
        assert set(range(1, 201)) <= set(seen), "a socket there from the start was skipped"
    finally:
        store.close()
