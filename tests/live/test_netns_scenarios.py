"""The namespace scenarios really produce the kernel states they promise, as the
kernel's own `ss -tanoi` in each namespace shows, and leave nothing behind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.live import netns
from tests.live.netns import TestHost
from tracer.core.states import TcpState

PORT = 24680  # any port will do: the namespaces are the test's own


@contextlib.contextmanager
def pair(purpose: str) -> Iterator[tuple[TestHost, TestHost, str, str]]:
    """host_pair, then proof that its namespaces and programs are gone."""
    with netns.host_pair(purpose) as hosts:
        yield hosts
    client, server = hosts[0], hosts[1]
    assert not {client.name, server.name} & netns.namespaces()
    assert all(p.poll() is not None for p in client.processes + server.processes)


def only(rows: list[netns.SsRow], what: str) -> netns.SsRow:
    assert len(rows) == 1, f"expected one {what}, ss shows {rows}"
    return rows[0]


@pytest.mark.parametrize("text, seconds", [
    ("59sec", 59.0),
    ("1min", 60.0),
    ("1min5sec", 65.0),
    ("3.192ms", 3.192),  # iproute2 prints 3192 ms so
    ("060ms", 0.06),
    ("10sec", 10.0),
])
def test_ss_timer_spellings(text: str, seconds: float):
    assert netns.ss_seconds(text) == pytest.approx(seconds)


def test_ss_rows_are_parsed():
    text = ("LAST-ACK 0      1         10.253.7.2:20001   10.253.7.1:53204 timer:(on,3.192ms,4)\n"
            "\t ts sack bbr rto:3264 backoff:4 unacked:1 retrans:1/5 lost:1\n"
            "CLOSE-WAIT 0 0 10.253.7.2:20001 10.253.7.1:53206 users:((\"python3\",pid=10297,fd=4))\n"
            "\t ts sack\n"
            "TIME-WAIT 0      0         10.253.7.1:53204   10.253.7.2:20001 timer:(timewait,59sec,0)\n"
            "\t\n"
            "LISTEN 0 128 [::]:22 [::]:*\n")
    last_ack, close_wait, time_wait, listen = netns.parse_ss(text)
    assert (last_ack.state, last_ack.send_q, last_ack.local_port, last_ack.peer_port) == (TcpState.LAST_ACK, 1, 20001, 53204)
    assert last_ack.timer == netns.Timer("on", 3.192, 4)
    assert last_ack.info_field("retrans") == "1/5" and last_ack.pids == ()
    assert close_wait.state == TcpState.CLOSE_WAIT and close_wait.pids == (10297,) and close_wait.timer is None
    assert time_wait.timer == netns.Timer("timewait", 59.0, 0) and time_wait.info == ""
    assert (listen.state, listen.local_ip, listen.peer_port) == (TcpState.LISTEN, "::", None)


def test_final_ack_dropped_leaves_last_ack_and_rearms_timewait(live_host):
    with pair("lastack") as (client, server, client_ip, server_ip):
        scenario = netns.final_ack_dropped(client, server, client_ip, server_ip, PORT)

        last_ack = only(scenario.server_sockets(TcpState.LAST_ACK), "LAST-ACK socket")
        assert last_ack.pids == (), "the server closed: LAST_ACK is orphaned"
        assert last_ack.send_q == 1, "the unacknowledged FIN"
        time_wait = only(scenario.client_sockets(TcpState.TIME_WAIT), "TIME-WAIT socket")
        assert time_wait.timer and time_wait.timer.name == "timewait"

        # Without re-arming the timer would show at most 60 s minus the time since the
        # server closed (ss truncates to whole seconds, which only lowers it); the
        # retransmitted FINs (~0.2, 0.6, 1.4, 3.0, 6.2 s) put it back to 60 s.
        seen: list[tuple[float, float]] = []

        def rearmed() -> bool:
            elapsed = time.monotonic() - scenario.server_closed_at
            row = only(scenario.client_sockets(TcpState.TIME_WAIT), "TIME-WAIT socket")
            seen.append((round(elapsed, 1), row.timer.seconds))
            return row.timer.seconds > netns.TIMEWAIT_SECONDS - elapsed + 2

        try:
            netns.wait_until(rearmed, "a re-armed TIME_WAIT timer", timeout=10, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; (seconds since close, timer) seen: {seen}") from None
        last_ack = only(scenario.server_sockets(TcpState.LAST_ACK), "LAST-ACK socket")
        assert last_ack.timer and last_ack.timer.name == "on" and last_ack.timer.retrans >= 3, last_ack


def test_close_wait_leak(live_host):
    with pair("closewait") as (client, server, client_ip, server_ip):
        scenario = netns.close_wait_leak(client, server, client_ip, server_ip, PORT)

        close_wait = only(scenario.server_sockets(TcpState.CLOSE_WAIT), "CLOSE-WAIT socket")
        assert close_wait.pids == (scenario.server_pid,)
        orphan = only(scenario.client_sockets(TcpState.FIN_WAIT2), "FIN-WAIT-2 socket")
        assert orphan.pids == () and orphan.timer and orphan.timer.name == "timewait", \
            "the client closed: its FIN_WAIT2 is a timewait mini-socket on fin_timeout"
        time.sleep(1)
        assert only(scenario.server_sockets(TcpState.CLOSE_WAIT), "CLOSE-WAIT socket").pids == (scenario.server_pid,)


def test_half_close(live_host):
    with pair("halfclose") as (client, server, client_ip, server_ip):
        scenario = netns.half_close(client, server, client_ip, server_ip, PORT)

        fin_wait2 = only(scenario.client_sockets(TcpState.FIN_WAIT2), "FIN-WAIT-2 socket")
        assert fin_wait2.pids == (scenario.client_pid,), "shutdown() only: the client still holds it"
        assert fin_wait2.timer is None, "a full socket, not a timewait mini-socket: no fin_timeout"
        close_wait = only(scenario.server_sockets(TcpState.CLOSE_WAIT), "CLOSE-WAIT socket")
        assert close_wait.pids == (scenario.server_pid,)


def test_ordinary_timewait(live_host):
    with pair("timewait") as (client, server, client_ip, server_ip):
        scenario = netns.ordinary_timewait(client, server, client_ip, server_ip, PORT, n=3)
        made_by = time.monotonic()

        assert len(set(scenario.client_ports)) == 3 and scenario.client_port == scenario.client_ports[0]
        rows = scenario.client_sockets(TcpState.TIME_WAIT)
        assert sorted(r.local_port for r in rows) == sorted(scenario.client_ports)
        assert all(r.timer.name == "timewait" and 50 <= r.timer.seconds <= netns.TIMEWAIT_SECONDS for r in rows)
        assert scenario.server_sockets() == []

        # The control for the re-arming test: with no retransmitted FIN the timers only
        # count down, never above 60 s minus the time since the sockets were seen.
        time.sleep(3)
        elapsed = time.monotonic() - made_by
        timers = [r.timer.seconds for r in scenario.client_sockets(TcpState.TIME_WAIT)]
        assert len(timers) == 3 and all(t <= netns.TIMEWAIT_SECONDS - elapsed for t in timers), (elapsed, timers)


def test_everything_is_cleaned_up_when_the_test_fails(live_host):
    with pytest.raises(RuntimeError, match="the test failed"):
        with netns.host_pair("failing") as (client, server, client_ip, server_ip):
            netns.final_ack_dropped(client, server, client_ip, server_ip, PORT)
            raise RuntimeError("the test failed")
    assert not {client.name, server.name} & netns.namespaces()
    assert all(p.poll() is not None for p in client.processes + server.processes)
