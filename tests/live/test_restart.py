"""A restart neither duplicates nor ends a socket that outlives it: the new daemon
finds it in the kernel's table and continues its life (the same id, the states the
previous run saw), and the rest of its life is written to that same record."""

from __future__ import annotations

import json
import socket
import time

from tests.live import traffic
from tests.live.conftest import http_get, start_daemon, stop_daemon


def lives(url: str, port: int) -> list[dict]:
    status, body = http_get(f"{url}/api/v1/sockets?port={port}&limit=1000")
    assert status == 200, body
    return json.loads(body)["sockets"]


def wait_for(url: str, port: int, check, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = lives(url, port)
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def states(life: dict) -> list[str]:
    return [s["state"] for s in life["states"]]


def test_a_connection_open_across_a_restart_keeps_one_life_a_socket(live_host, tmp_path):
    port = traffic.quiet_port()
    first = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    listener = traffic.listener("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    try:
        # Open lives reach the store once they have been open 2 s.
        before = wait_for(first.url, port, lambda f: sum(s["role"] != "listener" for s in f) == 2)
    finally:
        assert stop_daemon(first) == 0, first.log.read_text()
    ends = {s["role"]: s for s in before}
    assert set(ends) == {"listener", "active", "passive"}, before
    assert states(ends["active"]) == ["SYN_SENT", "ESTABLISHED"] and ends["active"]["open"]

    second = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    try:
        # After its baseline, its first flushes and a read of the kernel's table.
        time.sleep(2.5)
        after = lives(second.url, port)
        assert sorted(s["id"] for s in after) == sorted(s["id"] for s in before), (before, after)
        for s in after:
            was = next(b for b in before if b["id"] == s["id"])
            assert s["open"] and states(s) == states(was) and s["states"][0]["since"] == was["states"][0]["since"]
            assert s["role"] == was["role"] and s["service_port"] == port
        client.close()
        server.close()
        done = wait_for(second.url, port, lambda f: any(s["role"] == "passive" and not s["open"] for s in f)
                        and any(s["role"] == "active" and states(s)[-1] == "TIME_WAIT" for s in f))
        time.sleep(2.5)  # and once the daemon has settled: its next flushes and table read
        settled = lives(second.url, port)
        log = second.log.read_text()
    finally:
        listener.close()
        assert stop_daemon(second) == 0, second.log.read_text()
    assert sorted(s["id"] for s in settled) == sorted(s["id"] for s in done) == sorted(s["id"] for s in before)
    by_role = {s["role"]: s for s in settled}
    assert states(by_role["active"]) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    assert states(by_role["passive"]) == ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"]
    assert not by_role["passive"]["open"] and by_role["active"]["closer"] == "local"
    assert " continue, " in log  # (others of the host may have ended meanwhile)
