"""The timeline on a live host: every socket's life stored, queried, kept across a restart."""

from __future__ import annotations

import json
from pathlib import Path
import time

from tests.live import traffic
from tests.live.conftest import http_get, start_daemon, stop_daemon
from tests.live.observe import unseen

CLIENT = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
SERVER = ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"]


def sockets(url: str, port: int) -> list[dict]:
    status, body = http_get(f"{url}/api/v1/sockets?port={port}&limit=1000")
    assert status == 200, body
    return [s for s in json.loads(body)["sockets"] if s["role"] != "listener"]


def odd(lives: list[dict]) -> list[dict]:
    """The lives that are not the kernel's sequence for their role."""
    return [s for s in lives if [x["state"] for x in s["states"]] != (CLIENT if s["role"] == "active" else SERVER)]


def settled(daemon, port: int) -> tuple[list[dict], int]:
    """The port's 40 lives once stored, and what the daemon counts as unseen: waits (10 s at
    most) until every life cut short is accounted for, since a life whose end the program
    never saw is found ended only later."""
    deadline = time.monotonic() + 10
    while True:
        found, missed = sockets(daemon.url, port), unseen(daemon)
        if len(found) >= 40 and len(odd(found)) <= missed or time.monotonic() > deadline:
            return found, missed
        time.sleep(0.25)


def exact_but_for_the_unseen(found: list[dict], missed: int, log: str) -> list[dict]:
    """Each life that is not the kernel's sequence must be one the daemon counted as unseen
    (such a life ends where it was last seen)."""
    cut = odd(found)
    assert len(cut) <= missed, f"lives of another sequence, {missed} counted as unseen: {cut}; the daemon's log:\n{log}"
    return cut


def test_twenty_connections_stored_in_the_kernels_order_and_kept_across_a_restart(live_host, tmp_path):
    port = traffic.quiet_port()
    daemon = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    try:
        traffic.client_closed(port, 20)
        found, missed = settled(daemon, port)
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
    by_role = {role: [s for s in found if s["role"] == role] for role in ("active", "passive")}
    assert len(found) == 40 and {r: len(v) for r, v in by_role.items()} == {"active": 20, "passive": 20}
    cut = exact_but_for_the_unseen(found, missed, daemon.log.read_text())
    assert all(s["open"] for s in by_role["active"] if s not in cut), "still in TIME_WAIT"
    assert not any(s["open"] for s in by_role["passive"] if s not in cut)
    # The same records after a restart (the open ones are marked ended by the restart).
    again = start_daemon(tmp_path)
    try:
        after = sockets(again.url, port)
    finally:
        assert stop_daemon(again) == 0, again.log.read_text()
    assert sorted(s["id"] for s in after) == sorted(s["id"] for s in found)
    kept = {s["id"]: s["states"] for s in found}
    assert all([x["state"] for x in s["states"]] == [x["state"] for x in kept[s["id"]]] for s in after)


def test_the_page_shows_the_daemons_sockets_in_chromium(live_host, tmp_path, record_property):
    """The page draws what the API serves, life by life, and those are the kernel's sequences."""
    from tests.live.browser import chromium, wait_for

    port = traffic.quiet_port()
    daemon = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    try:
        traffic.client_closed(port, 20)
        settled(daemon, port)
        with chromium(tmp_path) as driver:
            driver.get(f"{daemon.url}/?port={port}&live=0")
            # 40 connection ends and the listener.
            wait_for(driver, "document.body.dataset.rendered === '41' && document.body.dataset.status === 'ready'",
                     20, "41 lifelines from the daemon")
            rows = driver.execute_script("return [...document.querySelectorAll('#sockets tbody tr')]"
                                         ".map(tr => [tr.dataset.id, [...tr.querySelectorAll('li.st')]"
                                         ".map(li => li.dataset.state)])")
            screens = Path(__file__).resolve().parents[2] / "test-output" / "timeline-screens"
            screens.mkdir(parents=True, exist_ok=True)
            shot = screens / "daemon-20-connections.png"
            shot.write_bytes(driver.get_screenshot_as_png())
            record_property("screenshot", str(shot))
            print(f"timeline screenshot against the daemon: {shot}")
        status, body = http_get(f"{daemon.url}/api/v1/sockets?port={port}&limit=1000")
        assert status == 200, body
        lives = json.loads(body)["sockets"]
        missed = unseen(daemon)
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
    assert len(rows) == 41 and dict(rows) == {str(s["id"]): [x["state"] for x in s["states"]] for s in lives}
    exact_but_for_the_unseen([s for s in lives if s["role"] != "listener"], missed, daemon.log.read_text())
