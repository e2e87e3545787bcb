"""SIGHUP on a real daemon: the stuck thresholds come again from its config file, and
a CLOSE_WAIT socket that was within the old threshold is stuck under the new one, at
the next scan and still after the scans that follow."""

from __future__ import annotations

import json
import signal
import socket
import time

from tests.live.conftest import http_get, start_daemon, stop_daemon


def _stuck(d, port: int) -> list[dict]:
    status, body = http_get(f"{d.url}/api/v1/stuck?port={port}&state=CLOSE_WAIT")
    assert status == 200, body
    return json.loads(body)["sockets"]


def test_sighup_reloads_the_stuck_thresholds(live_host, tmp_path):
    config = tmp_path / "tracer.yml"
    config.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: 600\n")
    d = start_daemon(tmp_path, "--config.file", str(config))
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        client.close()  # the server's end stays in CLOSE_WAIT: it never closes
        time.sleep(2.5)  # two scans past the socket's first second
        assert _stuck(d, port) == []

        config.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: 1\n")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not _stuck(d, port) and time.monotonic() < deadline:
            time.sleep(0.2)
        found = _stuck(d, port)
        assert [(s["lport"], s["rule"]["threshold_seconds"]) for s in found] == [(port, 1)], found
        time.sleep(2.5)  # after the next scans it is still there, counted once
        assert len(_stuck(d, port)) == 1
        _, metrics = http_get(d.url + "/metrics")
        line = [ln for ln in metrics.splitlines()
                if ln.startswith("tcpstate_stuck_total{") and f'port="{port}"' in ln and "CLOSE_WAIT" in ln]
        assert line and line[0].endswith(" 1.0"), line
        assert "SIGHUP: stuck thresholds reloaded" in d.log.read_text()
        server.close()
    finally:
        listener.close()
        assert stop_daemon(d) == 0, d.log.read_text()
