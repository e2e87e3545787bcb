"""/api/v1/sockets: the answers' shapes, every bad parameter, 404s, and the OpenAPI contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from jsonschema.exceptions import ValidationError
from prometheus_client import CollectorRegistry

from tests.conftest import Healthy
from tracer.core.lifecycle import Lifecycle, RawLife
from tracer.store.sqlite import SqliteStore
from tracer.web import create_app
from tracer.web.sockets_api import openapi_document

from lives import OFFSET_NS, SERVER_CLOSE, life, read  # tests/unit: the store's synthetic lives


def lives() -> list[RawLife]:
    """250 sockets: clients of :8080 and :443, the server ends of the :8080 ones, one open."""
    out = []
    for n in range(1, 126):
        port = 8080 if n % 2 else 443
        out.append(life(2 * n - 1, start=1000 + n, lport=40000 + n, rport=port, open=n == 125))
        out.append(life(2 * n, start=1000 + n + 0.0001, states=SERVER_CLOSE, lport=port, rport=40000 + n,
                        role="passive", port=port, laddr="10.0.0.1" if port == 443 else "127.0.0.1",
                        raddr="10.0.0.1" if port == 443 else "127.0.0.1"))
    return out


def records() -> list[Lifecycle]:
    """The same sockets as the store gives them back."""
    return [read(r) for r in lives()]


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "timeline.db", retention_s=3600, retention_bytes=1 << 30)
    s.write(lives(), OFFSET_NS)
    yield s
    s.close()


@pytest.fixture
def client(store):
    app = create_app(CollectorRegistry(), Healthy(), SimpleNamespace(report=None), SimpleNamespace(), store=store)
    return app.test_client()


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi_document()


def conforms(spec: dict, schema_name: str, instance: object) -> None:
    """Validates against a component schema, its $refs resolved within the document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    OAS30Validator(schema).validate(instance)


def test_a_page_of_sockets(client, spec):
    res = client.get("/api/v1/sockets")
    assert res.status_code == 200 and res.mimetype == "application/json"
    body = res.get_json()
    assert set(body) == {"total", "sockets", "next"}
    assert body["total"] == 250
    assert len(body["sockets"]) == 100  # the default limit
    assert body["sockets"][0] == records()[0].to_json()
    assert isinstance(body["next"], str)
    conforms(spec, "Page", body)


def test_pages_walk_every_socket_once(client):
    seen, url = [], "/api/v1/sockets?port=8080&limit=37"
    while True:
        body = client.get(url).get_json()
        assert body["total"] == 126
        seen += [s["id"] for s in body["sockets"]]
        if body["next"] is None:
            break
        url = f"/api/v1/sockets?port=8080&limit=37&cursor={body['next']}"
    assert seen == [r.id for r in records() if r.service_port == 8080]


@pytest.mark.parametrize("query, expected_total, first_id", [
    ("port=443", 124, 3),
    ("state=LAST_ACK", 125, 2),
    ("state=last-ack&port=443", 62, 4),
    ("addr=10.0.0.1", 62, 4),
    ("addr=%3A%3Affff%3A10.0.0.1", 62, 4),  # ::ffff:10.0.0.1
    ("since=1200&until=1300", 1, 249),  # only the open one is still alive then
    ("until=1001", 1, 1),
    ("port=&state=&addr=&since=&until=&limit=&cursor=", 250, 1),  # empty, as a form sends them: not given
    ("port=9", 0, None),
])
def test_filters(client, query, expected_total, first_id):
    body = client.get(f"/api/v1/sockets?{query}").get_json()
    assert body["total"] == expected_total
    assert (body["sockets"][0]["id"] if body["sockets"] else None) == first_id


def other_query_cursor(client) -> str:
    return client.get("/api/v1/sockets?port=443&limit=1").get_json()["next"]


@pytest.mark.parametrize("query, names", [
    ("port=http", "port"),
    ("port=0", "port"),
    ("port=65536", "port"),
    ("port=-1", "port"),
    ("port=80.5", "port"),
    ("port=%2B80", "port"),  # +80
    ("state=OPEN", "state"),
    ("addr=localhost", "addr"),
    ("addr=10.0.0", "addr"),
    ("since=yesterday", "since"),
    ("since=nan", "since"),
    ("until=inf", "until"),
    ("since=20&until=10", "since"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("cursor=not-a-cursor", "cursor"),
    ("cursor=%E2%9C%93", "cursor"),  # a non-ASCII cursor
    ("port=8080&cursor={other}", "cursor"),
])
def test_bad_parameters_are_400_naming_them(client, spec, query, names):
    if "{other}" in query:
        query = query.format(other=other_query_cursor(client))
    res = client.get(f"/api/v1/sockets?{query}")
    assert res.status_code == 400
    body = res.get_json()
    assert body["status"] == 400
    assert body["error"].startswith(f"{names}"), body
    assert "Traceback" not in body["error"] and "\n" not in body["error"]
    conforms(spec, "Error", body)


def test_one_socket_with_its_peer(client, spec):
    body = client.get("/api/v1/sockets/1").get_json()
    assert body == {**records()[0].to_json(), "peer": 2}
    assert client.get("/api/v1/sockets/2").get_json()["peer"] == 1
    conforms(spec, "SocketDetail", body)


def test_one_socket_without_peer(client, store, spec):
    store.write([life(999, start=5000, lport=50000, rport=9)], OFFSET_NS)
    body = client.get("/api/v1/sockets/999").get_json()
    assert body["peer"] is None
    conforms(spec, "SocketDetail", body)


@pytest.mark.parametrize("path", ["/api/v1/sockets/9999", "/api/v1/sockets/0", "/api/v1/sockets/abc",
                                  "/api/v1/sockets/-1", "/api/v1/sockets/1.5",
                                  "/api/v1/sockets/99999999999999999999"])
def test_unknown_sockets_are_404_json(client, spec, path):
    res = client.get(path)
    assert res.status_code == 404 and res.mimetype == "application/json"
    body = res.get_json()
    assert body["status"] == 404 and "no socket with id" in body["error"]
    conforms(spec, "Error", body)


def test_a_store_that_cannot_be_read_is_503_json(client, store):
    store.close()
    for path in ("/api/v1/sockets", "/api/v1/sockets/1"):
        res = client.get(path)
        assert res.status_code == 503
        assert "is closed" in res.get_json()["error"]


def test_without_a_store_there_is_no_sockets_api():
    app = create_app(CollectorRegistry(), Healthy(), SimpleNamespace(report=None), SimpleNamespace())
    res = app.test_client().get("/api/v1/sockets")
    assert res.status_code == 404 and res.get_json()["status"] == 404


def test_openapi_document_is_served_and_valid(client, spec):
    res = client.get("/api/v1/openapi.json")
    assert res.status_code == 200
    served = res.get_json()
    assert served == spec
    validate_spec(served)


def test_openapi_describes_every_field_the_api_returns(spec):
    schemas = spec["components"]["schemas"]
    lifecycle_fields = {f.name for f in dataclasses.fields(Lifecycle)} | {"one_way"}  # one_way: of the spans
    assert set(schemas["Socket"]["properties"]) == lifecycle_fields == set(records()[0].to_json())
    assert set(schemas["Socket"]["required"]) == lifecycle_fields
    assert set(schemas["SocketDetail"]["properties"]) == lifecycle_fields | {"peer"}
    assert set(schemas["Span"]["properties"]) == {"state", "since", "until"}
    assert set(schemas["Page"]["properties"]) == {"total", "sockets", "next"}
    assert all(s.get("additionalProperties") is False for s in schemas.values()), \
        "every object closed: an answer with a field the schema lacks fails validation"


@pytest.mark.parametrize("change", [
    lambda s: s.update(extra=1),  # a field the schema does not know
    lambda s: s.pop("comm"),  # a field missing
    lambda s: s["states"][0].update(state="TIME-WAIT"),  # not a state's name
    lambda s: s.update(lport=70000),
])
def test_the_schema_catches_an_answer_that_strays_from_it(spec, change):
    socket = records()[0].to_json()
    conforms(spec, "Socket", socket)
    change(socket)
    with pytest.raises(ValidationError):
        conforms(spec, "Socket", socket)


def test_openapi_parameters_are_the_ones_the_api_reads(spec):
    listed = [p["name"] for p in spec["paths"]["/api/v1/sockets"]["get"]["parameters"]]
    assert listed == ["port", "state", "addr", "since", "until", "limit", "cursor"]
    assert set(spec["paths"]) == {"/api/v1/sockets", "/api/v1/sockets/{id}", "/api/v1/bind-conflicts",
                                  "/api/v1/no-local-port", "/api/v1/stuck", "/api/v1/stream",
                                  "/api/v1/openapi.json"}
    assert [p["name"] for p in spec["paths"]["/api/v1/stuck"]["get"]["parameters"]] == ["port", "state"]
    for path in ("/api/v1/bind-conflicts", "/api/v1/no-local-port"):
        assert [p["name"] for p in spec["paths"][path]["get"]["parameters"]] == ["port", "limit"]
