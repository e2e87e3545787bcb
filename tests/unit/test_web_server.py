"""The web server as the daemon runs it (cheroot behind the Guard), over real
loopback sockets: TLS and client certificates, basic authentication, headers,
methods, and idle connections that must not starve /metrics."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import bcrypt
import pytest
from flask import Flask, Response

from tests import pki as pki_mod
from tests.conftest import Healthy
from tracer.web import guard, webconfig
from tracer.web.server import THREADS, WebServer

PASSWORD = "s3cret ünicode"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pki_mod.Pki:
    return pki_mod.make(tmp_path_factory.mktemp("pki"))


def _app() -> Flask:
    app = Flask(__name__)

    @app.get("/metrics")
    def metrics():
        return Response("up 1\n", mimetype="text/plain")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/slow")
    def slow():
        time.sleep(0.5)
        return {"slow": True}

    return app


def _config(pki: pki_mod.Pki, text: str) -> webconfig.WebConfig:
    path = pki.dir / "web.yml"
    path.write_text(text)
    return webconfig.load(path)


@contextmanager
def serving(config: webconfig.WebConfig | None = None) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = WebServer(sock, _app(), config)
    server.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.stop()


def _get(port: int, path: str = "/metrics", method: str = "GET", auth: tuple[str, str] | None = None,
         context: ssl.SSLContext | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10) if context
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _client(pki: pki_mod.Pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert == "client":
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    elif cert == "stranger":
        ctx.load_cert_chain(str(pki.stranger_cert), str(pki.stranger_key))
    return ctx


# -- headers and methods ---------------------------------------------------------


def test_every_answer_carries_the_security_headers_and_only_get_and_head_are_served():
    with serving() as port:
        status, headers, _ = _get(port)
        assert status == 200
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "deny"
        assert _get(port, method="HEAD")[0] == 200
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"):
            status, headers, body = _get(port, method=method)
            assert status == 405, method
            assert headers["allow"] == "GET, HEAD" and b'"status": 405' in body
            assert headers["x-frame-options"] == "deny"


def test_the_files_headers_win_and_a_blank_one_is_unset(pki):
    cfg = _config(pki, "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
                       "    Content-Security-Policy: ''\n    Strict-Transport-Security: max-age=60\n")
    with serving(cfg) as port:
        _, headers, _ = _get(port)
    assert headers["x-frame-options"] == "sameorigin" and headers["strict-transport-security"] == "max-age=60"
    assert "content-security-policy" not in headers


# -- basic authentication -------------------------------------------------------


@pytest.fixture()
def users(pki):
    return _config(pki, f"basic_auth_users:\n  alice: {HASH}\n  bob: {HASH}\n")


def test_basic_auth_lets_the_right_password_in_and_answers_everything_else_401(users):
    with serving(users) as port:
        assert _get(port, auth=("alice", PASSWORD))[0] == 200
        for auth, headers in ((None, None), (("alice", "wrong"), None), (("mallory", PASSWORD), None),
                              (("alice", "x" * 100), None), (("alice", HASH), None),  # the hash is not the password
                              (None, {"Authorization": "Basic !!!notbase64"}),
                              (None, {"Authorization": "Bearer abc"}),
                              (None, {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()})):
            status, h, body = _get(port, auth=auth, headers=headers)
            assert status == 401, auth or headers
            assert h["www-authenticate"].startswith("Basic") and b'"status": 401' in body
            assert h["x-content-type-options"] == "nosniff"
        # Probes are guarded too unless the file opens them.
        assert _get(port, "/healthz")[0] == 401


def test_an_unknown_user_costs_one_bcrypt_as_a_wrong_password_does_and_answers_are_cached(users):
    auth = guard.BasicAuth(users.users)
    header = lambda u, p: "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()  # noqa: E731
    assert auth.verify(header("alice", "wrong")) is None and auth.checks == 1
    assert auth.verify(header("mallory", "wrong")) is None and auth.checks == 2
    assert auth.verify(header("alice", "y" * 73)) is None and auth.checks == 3  # over bcrypt's 72 bytes: no 500
    assert auth.verify(header("alice", PASSWORD)) == "alice" and auth.checks == 4
    assert auth.verify(header("alice", PASSWORD)) == "alice" and auth.checks == 4  # cached
    assert auth.verify(header("mallory", "wrong")) is None and auth.checks == 4  # a cached failure stays one
    # Bob has the same hash: alice's cached success is not his (the user is in the key).
    assert auth.verify(header("bob", PASSWORD)) == "bob" and auth.checks == 5
    # An unknown user whose password matches the dummy still fails: only a known user passes.
    assert auth.verify(header("nobody", PASSWORD)) is None


def test_an_unknown_user_and_a_wrong_password_take_about_the_same_time(pki):
    slow = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    auth = guard.BasicAuth(webconfig.load(_write_users(pki, slow)).users)
    header = lambda u, p: "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()  # noqa: E731

    def took(user: str, n: int = 3) -> float:
        times = []
        for i in range(n):
            start = time.perf_counter()
            auth.verify(header(user, f"guess-{i}-{user}"))
            times.append(time.perf_counter() - start)
        return sorted(times)[n // 2]

    known, unknown = took("alice"), took("mallory")
    assert 0.5 < unknown / known < 2, (known, unknown)  # the same cost: bcrypt at cost 10 both times


def _write_users(pki, hashed: str):
    path = pki.dir / "users.yml"
    path.write_text(f"basic_auth_users:\n  alice: {hashed}\n")
    return path


def test_open_probes_leave_only_healthz_and_readyz_open(pki):
    cfg = _config(pki, f"basic_auth_users:\n  alice: {HASH}\nhttp_server_config:\n  open_probes: true\n")
    with serving(cfg) as port:
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/metrics")[0] == 401


def test_the_rate_limit_answers_429_past_its_burst(pki):
    cfg = _config(pki, "rate_limit:\n  interval: 10s\n  burst: 2\n")
    with serving(cfg) as port:
        assert [_get(port)[0] for _ in range(4)] == [200, 200, 429, 429]


# -- TLS ------------------------------------------------------------------------


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


def test_tls_serves_https_and_refuses_plain_http(pki):
    with serving(_config(pki, TLS)) as port:
        assert _get(port, context=_client(pki))[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            status, _, _ = _get(port)
            assert status >= 400  # if an answer comes at all, it is not the metrics
            raise ConnectionError("answered plain HTTP with an error")


def test_tls_min_version_refuses_older_clients(pki):
    with serving(_config(pki, TLS + "  min_version: TLS13\n")) as port:
        old = _client(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            _get(port, context=old)
        assert _get(port, context=_client(pki))[0] == 200


def test_client_certificates_are_required_verified_and_their_sans_checked(pki):
    cfg = _config(pki, TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n")
    with serving(cfg) as port:
        assert _get(port, context=_client(pki, "client"))[0] == 200
        for who in (None, "stranger"):  # none, or one our CA did not sign
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                _get(port, context=_client(pki, who))
    sans = _config(pki, TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                              "  client_allowed_sans: [someone-else]\n")
    with serving(sans) as port:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _get(port, context=_client(pki, "client"))
    ok = _config(pki, TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                            "  client_allowed_sans: [someone-else, client-one]\n")
    with serving(ok) as port:
        assert _get(port, context=_client(pki, "client"))[0] == 200


def test_connections_that_never_send_a_byte_hold_no_worker_and_do_not_stop_metrics(pki):
    """200 idle connections: plain, and TLS ones that never start their handshake
    (cheroot's own adapter would do that handshake in its accepting thread)."""
    for cfg, context in ((None, None), (_config(pki, TLS), _client(pki))):
        with serving(cfg) as port:
            threads_before = threading.active_count()
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
            try:
                time.sleep(0.3)
                start = time.monotonic()
                assert _get(port, context=context)[0] == 200
                assert time.monotonic() - start < 2
                # A worker pool, not a thread a connection.
                assert threading.active_count() - threads_before <= 2
            finally:
                for s in idle:
                    s.close()


def test_answers_come_in_parallel_up_to_the_pool(pki):
    with serving() as port:
        results = []
        workers = [threading.Thread(target=lambda: results.append(_get(port, "/slow")[0])) for _ in range(THREADS)]
        start = time.monotonic()
        for t in workers:
            t.start()
        for t in workers:
            t.join(10)
        assert results == [200] * THREADS
        assert time.monotonic() - start < 0.5 * THREADS / 2  # not one after the other


def test_stop_ends_the_live_streams_at_once():
    """A viewer's stream holds a worker for minutes; the server's stop waits for its
    workers, so the streams end first (SIGTERM does not wait for a browser tab)."""
    from prometheus_client import CollectorRegistry

    from tracer.web import create_app

    class Changes:
        version, written_at = 0, 0.0

    app = create_app(CollectorRegistry(), Healthy(), None, None, changes=Changes())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = WebServer(sock, app)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", sock.getsockname()[1], timeout=10)
    conn.request("GET", "/api/v1/stream")
    r = conn.getresponse()
    assert r.status == 200 and r.read(7) == b"retry: "
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 3
    conn.close()
