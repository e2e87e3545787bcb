"""Stuck sockets, made for real in network namespaces, seen by the daemon on the host.

The hosts are namespaces the test creates (tests/live/netns.py); the daemon runs in
the host's namespace and must find them all: the tracepoint sees every namespace,
and the kernel's table is read in each.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import netns, traffic
from tests.live.netns import wait_until
from tests.live.conftest import ROOT, Daemon, http_get, start_daemon, stop_daemon, tracer_cmd
from tests.live.observe import samples

SHORT = """
stuck:
  thresholds:
    CLOSE_WAIT: 3
    FIN_WAIT2: 3
    LAST_ACK: 4
    TIME_WAIT: 4
"""


@pytest.fixture(scope="module")
def short_daemon(live_host, tmp_path_factory) -> Iterator[Daemon]:
    """A daemon whose thresholds are seconds, so the scenarios are flagged quickly."""
    tmp = tmp_path_factory.mktemp("stuck")
    config = tmp / "tcpstate-tracer.yml"
    config.write_text(SHORT)
    d = start_daemon(tmp, "--config.file", str(config), "--timewait-reconcile-seconds", "1")
    yield d
    assert stop_daemon(d) == 0, d.log.read_text()


def stuck_now(daemon: Daemon) -> list[dict]:
    status, body = http_get(daemon.url + "/api/v1/stuck")
    assert status == 200, body
    return json.loads(body)["sockets"]


def wait_stuck(daemon: Daemon, match, what: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in stuck_now(daemon) if match(s)]
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not flagged within {timeout} s; stuck now: {stuck_now(daemon)}")
        time.sleep(0.25)


def at(host: netns.TestHost, state: str, lport: int, rport: int):
    return lambda s: (s["state"] == state and s["netns"] == host.netns_inode
                      and s["lport"] == lport and s["rport"] == rport)


def test_close_wait_leak_is_flagged_with_its_owner(short_daemon: Daemon):
    port = traffic.quiet_port()
    with netns.host_pair("cw") as (client, server, client_ip, server_ip):
        sc = netns.close_wait_leak(client, server, client_ip, server_ip, port)
        s = wait_stuck(short_daemon, at(server, "CLOSE_WAIT", port, sc.client_port), "CLOSE_WAIT", 10)
    assert (s["laddr"], s["raddr"], s["service_port"], s["role"]) == (server_ip, client_ip, port, "passive")
    assert s["age_seconds"] > 3 and s["age_known"] is True
    assert s["pid"] == sc.server_pid
    assert s["rule"]["state"] == "CLOSE_WAIT" and s["rule"]["threshold_seconds"] == 3
    assert "never called close()" in s["rule"]["description"]
    assert time.time() - 15 < s["since"] < time.time()


def test_a_half_close_its_owner_holds_is_not_stuck_but_its_peer_s_close_wait_is(short_daemon: Daemon):
    """shutdown(SHUT_WR), the socket kept: FIN_WAIT2 past its threshold, not stuck (the
    owner may still read); the peer that never closes is the CLOSE_WAIT leak."""
    port = traffic.quiet_port()
    with netns.host_pair("hc") as (client, server, client_ip, server_ip):
        sc = netns.half_close(client, server, client_ip, server_ip, port)
        wait_stuck(short_daemon, at(server, "CLOSE_WAIT", port, sc.client_port), "peer CLOSE_WAIT", 10)
        time.sleep(1.5)  # the FIN_WAIT2 is as old as the CLOSE_WAIT: past its 3 s; the next scan
        assert not [s for s in stuck_now(short_daemon) if at(client, "FIN_WAIT2", sc.client_port, port)(s)]
        text = Daemon.metrics(short_daemon)
    assert list(samples(text, "tcpstate_stuck_sockets", port=str(port), state="FIN_WAIT2").values()) == [0.0]
    assert list(samples(text, "tcpstate_sockets", port=str(port), state="FIN_WAIT2").values()) == [1.0]
    oldest = samples(text, "tcpstate_oldest_socket_age_seconds", port=str(port), state="FIN_WAIT2")
    assert list(oldest.values())[0] > 3, "its age is still shown"


def test_an_orphaned_fin_wait2_is_stuck_with_what_holds_it(short_daemon: Daemon):
    """shutdown(SHUT_WR), then close() (FIN_WAIT2 -> FIN_WAIT2 on the tracepoint): an
    orphan the kernel keeps (tcp_fin_timeout above 60 s), stuck past its threshold."""
    port = traffic.quiet_port()
    with netns.host_pair("of") as (client, server, client_ip, server_ip):
        sc = netns.orphaned_fin_wait2(client, server, client_ip, server_ip, port)
        s = wait_stuck(short_daemon, at(client, "FIN_WAIT2", sc.client_port, port), "FIN_WAIT2", 10)
        text = Daemon.metrics(short_daemon)
    assert s["role"] == "active" and s["pid"] == sc.client_pid, "the owner it had"
    assert "orphaned: its owner closed it" in s["evidence"] and "tcp_fin_timeout" in s["evidence"]
    assert samples(text, "tcpstate_stuck_sockets", port=str(port), state="FIN_WAIT2") == {
        (("port", str(port)), ("state", "FIN_WAIT2")): 1.0}
    assert samples(text, "tcpstate_stuck_total", port=str(port), state="FIN_WAIT2") == {
        (("port", str(port)), ("state", "FIN_WAIT2")): 1.0}


def test_lost_final_ack_leaves_last_ack_and_rearmed_timewait(short_daemon: Daemon):
    port = traffic.quiet_port()
    with netns.host_pair("fa") as (client, server, client_ip, server_ip):
        sc = netns.final_ack_dropped(client, server, client_ip, server_ip, port)
        last_ack = wait_stuck(short_daemon, at(server, "LAST_ACK", port, sc.client_port), "LAST_ACK", 10)
        tw = wait_stuck(short_daemon, at(client, "TIME_WAIT", sc.client_port, port), "TIME_WAIT", 10)
        cli = subprocess.run(tracer_cmd("stuck", "--web.listen-address", short_daemon.url.removeprefix("http://")),
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        text = Daemon.metrics(short_daemon)
        # Its life in the timeline carries the same retransmitted FINs, each with its time.
        life = wait_until(lambda: fins_stored(short_daemon, port, sc.client_port, last_ack["retransmits"]["count"]),
                          "the LAST_ACK socket's retransmissions stored", timeout=10)
    assert life["how"] == "close" and life["closer"] == "peer" and life["open"]
    last_ack_since = next(s["since"] for s in life["states"] if s["state"] == "LAST_ACK")
    assert all(m["kind"] == "retransmit" and m["state"] == "LAST_ACK" and m["at"] > last_ack_since
               for m in life["marks"])
    assert [m["at"] for m in life["marks"]] == sorted(m["at"] for m in life["marks"])
    assert last_ack["role"] == "passive" and last_ack["service_port"] == port
    assert "FIN is never acknowledged" in last_ack["rule"]["description"]
    # The evidence: the FIN the server retransmits in LAST_ACK (tcp:tcp_retransmit_skb), counted
    # on the socket and, exactly, in the kernel; nothing else retransmits on this port.
    fins = last_ack["retransmits"]["count"]
    assert fins >= 1 and last_ack["retransmits"]["last"] > last_ack["since"]
    assert f"LAST_ACK for {last_ack['age_seconds']:.0f} s: our FIN retransmitted {fins} time" in last_ack["evidence"]
    assert last_ack["evidence"].endswith("never acknowledged")
    counted = samples(text, "tcpstate_retransmits_total", port=str(port), state="LAST_ACK")
    assert list(counted.values())[0] >= fins
    assert set(samples(text, "tcpstate_retransmits_total", port=str(port))) == set(counted)
    assert tw["role"] == "active" and tw["service_port"] == port
    assert cli.returncode == 0, cli.stderr
    rows = [line for line in cli.stdout.splitlines() if f"{server_ip}:{port}" in line or f":{port} " in line]
    assert any(line.startswith("LAST_ACK") and "our FIN retransmitted" in line for line in rows), cli.stdout
    assert any(line.startswith("TIME_WAIT") for line in rows), cli.stdout


def fins_stored(daemon: Daemon, port: int, peer_port: int, at_least: int) -> dict | None:
    """The timeline's life of the server's socket of this connection, once it holds at
    least ``at_least`` retransmissions."""
    status, body = http_get(f"{daemon.url}/api/v1/sockets?port={port}&state=LAST_ACK&limit=100")
    assert status == 200, body
    for s in json.loads(body)["sockets"]:
        if s["lport"] == port and s["rport"] == peer_port and len(s["marks"]) >= at_least:
            return s
    return None


def test_sockets_open_before_the_start_are_counted_at_once(live_host, tmp_path: Path):
    port = traffic.quiet_port()
    config = tmp_path / "c.yml"
    config.write_text(SHORT)
    with netns.host_pair("bl") as (client, server, client_ip, server_ip):
        sc = netns.close_wait_leak(client, server, client_ip, server_ip, port)
        daemon = start_daemon(tmp_path, "--config.file", str(config))
        try:
            first = samples(daemon.metrics(), "tcpstate_sockets", port=str(port), state="CLOSE_WAIT")
            assert list(first.values()) == [1.0], "the first scrape already counts it"
            s = wait_stuck(daemon, at(server, "CLOSE_WAIT", port, sc.client_port), "CLOSE_WAIT", 10)
            assert s["age_known"] is False, "its age is known only since the daemon started"
            assert s["pid"] == sc.server_pid, "the owner comes from /proc/*/fd"
        finally:
            assert stop_daemon(daemon) == 0, daemon.log.read_text()


def test_defaults_flag_lost_final_ack_past_2msl_but_not_a_younger_timewait(live_host, tmp_path: Path):
    """The scenario the operator meets, with the default settings: a little over 60 s."""
    daemon = start_daemon(tmp_path)
    try:
        stuck_port, plain_port = traffic.quiet_port(), traffic.quiet_port()
        with netns.host_pair("df") as (client, server, client_ip, server_ip):
            sc = netns.final_ack_dropped(client, server, client_ip, server_ip, stuck_port)
            started = time.monotonic()
            time.sleep(15)
            plain = netns.ordinary_timewait(client, server, client_ip, server_ip, plain_port, n=3)
            last_ack = wait_stuck(daemon, at(server, "LAST_ACK", stuck_port, sc.client_port), "LAST_ACK", 80)
            tw = wait_stuck(daemon, at(client, "TIME_WAIT", sc.client_port, stuck_port), "TIME_WAIT", 20)
            flagged_after = time.monotonic() - started
            assert len(plain.client_sockets("TIME_WAIT")) == 3, "the younger TIME_WAITs still exist"
            everything = stuck_now(daemon)
            text = daemon.metrics()
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
    assert 60 < last_ack["age_seconds"] and 60 < tw["age_seconds"]
    assert flagged_after < 75, f"flagged only after {flagged_after:.0f} s"
    assert last_ack["rule"]["threshold_seconds"] == 60 and "2MSL" in last_ack["rule"]["description"]
    assert tw["rule"]["threshold_seconds"] == 60 and "re-arming" in tw["rule"]["description"]
    assert (tw["laddr"], tw["raddr"], last_ack["laddr"], last_ack["raddr"]) == (client_ip, server_ip, server_ip, client_ip)
    assert not [s for s in everything if s["service_port"] == plain_port]
    assert samples(text, "tcpstate_stuck_sockets", port=str(plain_port), state="TIME_WAIT") == {
        (("port", str(plain_port)), ("state", "TIME_WAIT")): 0.0}
    assert samples(text, "tcpstate_stuck_total", port=str(stuck_port), state="LAST_ACK") == {
        (("port", str(stuck_port)), ("state", "LAST_ACK")): 1.0}
