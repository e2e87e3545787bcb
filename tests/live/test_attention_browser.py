"""The page's "Needs attention" panel in headless Chromium, against a real daemon: a
stuck LAST_ACK socket (its final ACK dropped), a bind() refused by TIME_WAIT holders
and a connect() that found no free local port, each listed with its evidence or
remedy and a link to its socket or port; the stuck socket's lifeline stands out past
its threshold, and the port's timeline marks the refused bind()."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import netns, traffic
from tests.live.browser import console_errors, wait_for
from tests.live.conftest import ROOT, Daemon, start_daemon, stop_daemon
from tests.live.netns import TestHost
from tests.live.test_bind_conflicts import EXHAUST, RESTART, run_in

SHORT = "stuck:\n  thresholds:\n    LAST_ACK: 2\n"
SCREENS = ROOT / "test-output" / "timeline-screens"


@pytest.fixture(scope="module")
def daemon(live_host, tmp_path_factory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("attention")
    (tmp / "c.yml").write_text(SHORT)
    d = start_daemon(tmp, "--config.file", str(tmp / "c.yml"), "--timewait-reconcile-seconds", "1")
    yield d
    assert stop_daemon(d) == 0, d.log.read_text()


def items(driver: Any) -> list[dict[str, str]]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#attention-list li')].map(li => ({
            kind: li.dataset.kind, text: li.querySelector('a').textContent,
            href: li.querySelector('a').getAttribute('href'), why: li.querySelector('.why').textContent}));""")


def test_stuck_sockets_conflicts_and_ports_running_out_are_listed_and_lead_to_their_timeline(daemon, driver):
    from selenium.webdriver.common.by import By

    stuck_port, bind_port, dest_port = traffic.quiet_port(), traffic.quiet_port(), traffic.quiet_port()
    with TestHost("att-bind") as bind_host, TestHost("att-noport") as port_host, \
            netns.host_pair("att-fa") as (client, server, client_ip, server_ip):
        assert run_in(bind_host, RESTART, bind_port, 2, 0, 0)["bind"] == "EADDRINUSE"
        port_host.exec(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40001"])
        assert run_in(port_host, EXHAUST, dest_port)["connect"] == "EADDRNOTAVAIL"
        sc = netns.final_ack_dropped(client, server, client_ip, server_ip, stuck_port)
        driver.get(daemon.url + "/")
        # Its own three entries (the host may have stuck sockets of its own besides).
        wait_for(driver, "[...document.querySelectorAll('#attention-list li')].some(li => li.dataset.kind === "
                         f"'stuck' && li.textContent.includes(':{sc.client_port} '))", 20, "the stuck LAST_ACK listed")
        found = items(driver)
        summary = driver.find_element(By.ID, "attention-summary").text
        SCREENS.mkdir(parents=True, exist_ok=True)
        (SCREENS / "30-attention.png").write_bytes(driver.find_element(By.ID, "attention").screenshot_as_png)

        stuck = next(i for i in found if i["kind"] == "stuck" and f":{sc.client_port}" in i["text"])
        assert stuck["text"].startswith("LAST_ACK for ") and "our FIN retransmitted" in stuck["why"], stuck
        conflict = next(i for i in found if i["kind"] == "conflict" and f"port {bind_port}:" in i["text"])
        assert "TIME_WAIT" in conflict["why"] and "SO_REUSEADDR" in conflict["why"]
        assert conflict["href"] == f"?port={bind_port}"
        refused = next(i for i in found if i["kind"] == "no_local_port" and f":{dest_port}" in i["text"])
        assert "2 of them in TIME_WAIT" in refused["why"] and refused["href"] == f"?port={dest_port}"
        assert "stuck socket" in summary and "refused bind()" in summary

        # The stuck socket's link: its lifeline (framed past its threshold) and its ladder.
        driver.find_element(By.CSS_SELECTOR, f'#attention-list a[href="{stuck["href"]}"]').click()
        sock_id = stuck["href"].split("selected=")[1]
        wait_for(driver, "document.body.dataset.status === 'ready' && "
                         "/^[0-9]+$/.test(document.body.dataset.ladder || '')", 15, "the stuck socket's ladder")
        wait_for(driver, f"window.tcpTimeline.lifelines.stuck.has({sock_id})", 10, "its lifeline marked stuck")
        assert f"#{sock_id} · server (passive)" in driver.find_element(By.ID, "detail").text
        (SCREENS / "31-stuck-lifeline.png").write_bytes(driver.find_element(By.CSS_SELECTOR, ".timeline-panel")
                                                        .screenshot_as_png)

        # The refused bind()'s link: its port's timeline, with the refusal marked at its time.
        driver.get(daemon.url + "/" + conflict["href"])
        wait_for(driver, "window.tcpTimeline.lifelines.markers.length >= 1", 15, "the refused bind() marked")
        markers = driver.execute_script("return window.tcpTimeline.lifelines.markers")
        assert all(m["label"].startswith("bind() refused") for m in markers)
    assert console_errors(driver, allow=("/api/v1/stream",)) == []
