"""How connections closed, on the timeline page of a real daemon in headless Chromium:
a half-close by shutdown(SHUT_WR) named on its FIN arrow and in the socket panel with
how long it ran one way, and a LAST_ACK socket whose final ACK is dropped drawing each
retransmitted FIN on its ladder, with its time."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.live import netns, traffic
from tests.live.browser import console_errors, ladder, wait_for
from tests.live.conftest import ROOT, Daemon, http_get
from tests.live.netns import TestHost, wait_until
from tests.live.test_closes import CONNECTION, ONE_WAY_S

SCREENS = ROOT / "test-output" / "timeline-screens"
CLIENT = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]


def lives(daemon: Daemon, port: int, **params: str) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in {"port": str(port), "limit": "100", **params}.items())
    status, body = http_get(f"{daemon.url}/api/v1/sockets?{query}")
    assert status == 200, body
    return [s for s in json.loads(body)["sockets"] if s["role"] != "listener"]


def show(driver: Any, daemon: Daemon, port: int, sock_id: int) -> dict[str, Any]:
    """The page filtered to the port with the socket selected, once its ladder is drawn."""
    driver.get(f"{daemon.url}/?port={port}&selected={sock_id}")
    wait_for(driver, "document.body.dataset.status === 'ready' && /^[0-9]+$/.test(document.body.dataset.ladder || '')",
             15, f"the ladder of #{sock_id}")
    return ladder(driver)


def test_a_half_close_is_named_on_its_fin_and_in_the_panel_with_its_one_way_time(daemon, driver) -> None:
    from selenium.webdriver.common.by import By

    port = traffic.quiet_port()
    with TestHost("page-shut") as host:
        host.exec([sys.executable, "-c", CONNECTION, str(port), "shut_wr"])
    both = wait_until(lambda: (found := lives(daemon, port)) and all(s["how"] for s in found) and len(found) == 2
                      and found, "both ends stored with how they closed", timeout=10)
    client = next(s for s in both if s["role"] == "active")
    lad = show(driver, daemon, port, client["id"])
    # (its TIME_WAIT went with the namespace: ended at the next read of the kernel's table, or not yet)
    assert lad["client"] in (CLIENT, CLIENT + ["CLOSE"]), lad["client"]
    assert lad["server"] == ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    # The client's FIN came from shutdown(SHUT_WR), the server's from close().
    assert "FIN · shutdown(SHUT_WR)" in lad["segments"] and "FIN · close()" in lad["segments"], lad["segments"]
    said = driver.find_element(By.CSS_SELECTOR, "#detail p.close").text
    assert said.startswith("This end sent the first FIN, by shutdown(SHUT_WR): a half-close."), said
    took = said.split("ran one way for ")[1].split(" until the peer's FIN")[0]
    seconds = float(took.split(" ")[0]) / (1000 if took.endswith(" ms") else 1)
    assert ONE_WAY_S <= seconds < ONE_WAY_S + 2, said
    steps = driver.find_element(By.CSS_SELECTOR, "#ladder-drawing details ol").get_attribute("textContent")
    assert "sends FIN by shutdown(SHUT_WR)" in steps
    SCREENS.mkdir(parents=True, exist_ok=True)
    Path(SCREENS / "20-half-close.png").write_bytes(driver.find_element(By.CSS_SELECTOR, ".detail-panel").screenshot_as_png)
    assert console_errors(driver, allow=("/api/v1/stream",)) == []


def test_a_lost_final_ack_draws_each_retransmitted_fin_on_the_ladder(daemon, driver) -> None:
    from selenium.webdriver.common.by import By

    port = traffic.quiet_port()
    with netns.host_pair("page-fa") as (client, server, client_ip, server_ip):
        sc = netns.final_ack_dropped(client, server, client_ip, server_ip, port)

        def retransmitting() -> dict | None:
            found = [s for s in lives(daemon, port, state="LAST_ACK") if s["rport"] == sc.client_port]
            return found[0] if found and len(found[0]["marks"]) >= 3 else None

        life = wait_until(retransmitting, "three FIN retransmissions stored", timeout=15)
        lad = show(driver, daemon, port, life["id"])
        detail = driver.find_element(By.ID, "detail").text
    # Its peer is in another namespace, on this host: the ladder has both ends.
    assert lad["server"][-1] == "LAST_ACK", lad
    assert len(lad["resent"]) >= len(life["marks"]) and set(lad["resent"]) == {"FIN"}
    # Each a step of the server's in LAST_ACK: its time, and how long after the step before.
    assert all(side == "server" and state == "LAST_ACK" and " · +" in text for side, state, text in lad["marks"])
    times = [text.split(" · ")[0] for _, _, text in lad["marks"]]
    assert times == sorted(times) and len(set(times)) == len(times), "each at its own time"
    assert "The peer sent the first FIN" in detail and "(in LAST_ACK), the last at" in detail, detail
    SCREENS.mkdir(parents=True, exist_ok=True)
    Path(SCREENS / "21-lost-final-ack.png").write_bytes(driver.find_element(By.ID, "ladder").screenshot_as_png)
    assert console_errors(driver, allow=("/api/v1/stream",)) == []
