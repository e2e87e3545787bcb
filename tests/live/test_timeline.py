"""The timeline on a live host: every socket's life stored, queried, kept across a restart."""

from __future__ import annotations

import json
import time

from tests.live import traffic
from tests.live.conftest import http_get, start_daemon, stop_daemon

CLIENT = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
SERVER = ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"]


def sockets(url: str, port: int) -> list[dict]:
    status, body = http_get(f"{url}/api/v1/sockets?port={port}&limit=1000")
    assert status == 200, body
    return [s for s in json.loads(body)["sockets"] if s["role"] != "listener"]


def test_twenty_connections_stored_in_the_kernels_order_and_kept_across_a_restart(live_host, tmp_path):
    port = traffic.quiet_port()
    daemon = start_daemon(tmp_path)
    try:
        traffic.client_closed(port, 20)
        deadline = time.monotonic() + 10
        while len(found := sockets(daemon.url, port)) < 40 and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
    by_role = {role: [s for s in found if s["role"] == role] for role in ("active", "passive")}
    assert len(found) == 40 and {r: len(v) for r, v in by_role.items()} == {"active": 20, "passive": 20}
    assert all([x["state"] for x in s["states"]] == CLIENT for s in by_role["active"])
    assert all([x["state"] for x in s["states"]] == SERVER for s in by_role["passive"])
    assert all(s["open"] for s in by_role["active"]), "still in TIME_WAIT"
    assert not any(s["open"] for s in by_role["passive"])
    # The same records after a restart (the open ones are marked ended by the restart).
    again = start_daemon(tmp_path)
    try:
        after = sockets(again.url, port)
    finally:
        assert stop_daemon(again) == 0, again.log.read_text()
    assert sorted(s["id"] for s in after) == sorted(s["id"] for s in found)
    assert all([x["state"] for x in s["states"]] == CLIENT for s in after if s["role"] == "active")
