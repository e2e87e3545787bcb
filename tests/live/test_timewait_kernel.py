"""TIME_WAIT against the kernel's socket table: what no tracepoint shows is corrected."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.live import traffic
from tests.live.conftest import Daemon, http_get, start_daemon, stop_daemon
from tests.live.observe import corrections, ss_timewait, timewait_metric, wait_timewait_equal


@pytest.fixture
def fast_daemon(live_host, tmp_path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    yield d
    assert stop_daemon(d) == 0, d.log.read_text()


def test_timewait_killed_in_the_kernel_is_corrected(fast_daemon: Daemon):
    port = traffic.quiet_port()
    traffic.client_closed(port, 20)
    # Usually 20; the kernel itself may already have ended one or two early (a late ACK
    # answered by the listener's reset, RFC 1337): the model follows either way.
    held = wait_timewait_equal(fast_daemon, port)
    assert held >= 15
    before = corrections(fast_daemon, "absent_in_kernel")
    # SOCK_DESTROY on five of them: gone from the kernel, and no tracepoint says so
    # (as when a peer's listener answers a late ACK with a reset, RFC 1337).
    out = subprocess.run(["ss", "-Htan", "state", "time-wait", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    victims = sorted(int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines())[:5]
    sports = " or ".join(f"sport = :{p}" for p in victims)
    subprocess.run(["ss", "-K", "-tan", "state", "time-wait", f"( dport = :{port} ) and ( {sports} )"],
                   check=True, capture_output=True)
    assert ss_timewait(port) == held - 5
    wait_timewait_equal(fast_daemon, port, held - 5)
    assert corrections(fast_daemon, "absent_in_kernel") - before >= 5


def test_an_orphan_whose_peer_has_not_closed_stays_in_time_wait(fast_daemon: Daemon):
    """A client that closes first while its peer holds the connection (CLOSE_WAIT) is
    handed to a timewait socket in the FIN_WAIT2 substate: the kernel's table reports it
    as FIN_WAIT2, with a timewait timer. Past the reconcile's grace it must stay the
    model's TIME_WAIT, neither ended as absent nor found again once the peer's FIN
    turns it into TIME_WAIT proper."""
    port = traffic.quiet_port()
    srv = traffic.listener("127.0.0.1", port)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    servers = [srv.accept()[0] for _ in clients]
    try:
        for c in clients:
            c.close()
        time.sleep(4)  # the 2 s grace and more than one reconcile
        out = subprocess.run(["ss", "-Htano", "state", "fin-wait-2", f"( dport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        assert len(out.splitlines()) == 3 and out.count("timer:(timewait") == 3, out
        assert ss_timewait(port) == 0
        assert timewait_metric(fast_daemon, port) == 3
        for s in servers:
            s.close()
        time.sleep(4)
        assert ss_timewait(port) == 3
        assert timewait_metric(fast_daemon, port) == 3
    finally:
        for s in servers:
            s.close()
        srv.close()
    status, body = http_get(f"{fast_daemon.url}/api/v1/sockets?port={port}")
    assert status == 200, body
    lives = sorted((s["role"], s["open"], s["states"][-1]["state"]) for s in json.loads(body)["sockets"]
                   if s["role"] != "listener")
    # one life per connection end: none ended early, none found again as a stranger
    assert lives == [("active", True, "TIME_WAIT")] * 3 + [("passive", False, "LAST_ACK")] * 3


def test_timewait_from_before_the_start_is_counted_from_the_first_scrape(live_host, tmp_path):
    port = traffic.quiet_port()
    traffic.client_closed(port, 10)
    daemon = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    try:
        assert (timewait_metric(daemon, port), ss_timewait(port)) == (10, 10), "loaded before ready"
        assert corrections(daemon, "found_in_kernel") == 0, "the baseline, not a correction"
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
