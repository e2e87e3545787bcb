"""The daemon's web side hardened, against a real daemon: TLS and basic
authentication from --web.config.file over /metrics, the API, the event stream and
the page alike; probes open when the file says so; a bad file stops the start with
one line; 200 idle connections do not stop /metrics and hold no threads."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from tests import pki as pki_mod
from tests.live.conftest import ROOT, http_get, start_daemon, stop_daemon, tracer_cmd

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def secured(live_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    pki = pki_mod.make(tmp / "pki")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(6)).decode()
    config = tmp / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n"
                      f"basic_auth_users:\n  alice: {hashed}\nhttp_server_config:\n  open_probes: true\n")
    context = ssl.create_default_context(cafile=str(pki.ca))
    d = start_daemon(tmp, "--web.config.file", str(config), scheme="https", context=context)
    d.web_config = config
    yield d, context
    assert stop_daemon(d) == 0, d.log.read_text()


def _auth(user: str = "alice", password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/sockets?limit=1", "/api/v1/stuck", "/api/v1/bind-conflicts",
                                  "/api/v1/openapi.json", "/", "/assets/timeline.js"])
def test_everything_but_the_probes_needs_the_password(secured, path):
    d, context = secured
    status, _ = http_get(d.url + path, context=context)
    assert status == 401
    assert http_get(d.url + path, context=context, headers=_auth("alice", "wrong"))[0] == 401
    assert http_get(d.url + path, context=context, headers=_auth("mallory"))[0] == 401
    status, body = http_get(d.url + path, context=context, headers=_auth())
    assert status == 200, body[:200]


def test_the_event_stream_needs_the_password_too(secured):
    d, context = secured
    import http.client

    for headers, expected in (({}, 401), (_auth(), 200)):
        conn = http.client.HTTPSConnection("127.0.0.1", int(d.url.rsplit(":", 1)[1]), context=context, timeout=10)
        try:
            conn.request("GET", "/api/v1/stream", headers=headers)
            assert conn.getresponse().status == expected
        finally:
            conn.close()


def test_probes_are_open_when_the_file_says_so_and_plain_http_gets_no_metrics(secured):
    d, context = secured
    assert http_get(d.url + "/healthz", context=context)[0] == 200
    assert http_get(d.url + "/readyz", context=context)[0] == 200
    plain = d.url.replace("https://", "http://")
    try:
        status, body = http_get(plain + "/metrics", timeout=5)
    except OSError:
        return  # refused at the TLS layer: fine
    assert status >= 400 and "tcpstate_" not in body


def test_metrics_answer_with_200_idle_connections_open_and_the_threads_stay_bounded(secured):
    d, context = secured
    threads = lambda: len(list(Path(f"/proc/{d.proc.pid}/task").iterdir()))  # noqa: E731
    before = threads()
    port = int(d.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        time.sleep(0.5)
        for _ in range(3):
            start = time.monotonic()
            status, body = http_get(d.url + "/metrics", context=context, headers=_auth(), timeout=10)
            assert status == 200 and "tcpstate_transitions_total" in body
            assert time.monotonic() - start < 3
        assert threads() <= before + 2, (before, threads())
    finally:
        for s in idle:
            s.close()


def test_a_bad_web_config_stops_the_start_with_one_line(live_host, tmp_path):
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_filse: server.crt\n")
    done = subprocess.run(tracer_cmd("run", "--web.listen-address", "127.0.0.1:1", "--web.config.file", str(config),
                                     "--db", str(tmp_path / "t.db")),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "unknown key 'tls_server_config.cert_filse'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_asks_a_secured_daemon_over_tls_with_the_password_from_the_environment(secured):
    import os

    d, _ = secured
    argv = tracer_cmd("stuck", "--json", "--web.listen-address", d.url.split("://")[1],
                      "--web.config.file", str(d.web_config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCPSTATE_TRACER_")}
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode != 0 and "asks for a password" in refused.stderr, refused.stderr
    ok = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                        env=env | {"TCPSTATE_TRACER_WEB_USER": "alice", "TCPSTATE_TRACER_WEB_PASSWORD": PASSWORD})
    assert ok.returncode == 0, ok.stderr
    assert '"sockets"' in ok.stdout
