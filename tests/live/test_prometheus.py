"""A real Prometheus scrapes the real daemon: real loopback connections show up in
PromQL, the alert rules' expressions match the daemon's real series, and the rules
load and evaluate in a real server."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.live.conftest import Daemon, cannot_run
from tests.live.observe import samples, unseen
from tests.live.prometheus import DEPLOY, PROMETHEUS, Prometheus, PrometheusError, start_prometheus
from tests.live.traffic import client_closed, quiet_port

JOB = "tcpstate-tracer"
ALERTS = DEPLOY / "alerts.yml"
CONNECTIONS = 20
REFUSED = 40  # connect() to a port nobody listens on: over 30 in 5 minutes (the ratio alert's floor)


@pytest.fixture(scope="module")
def prometheus(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if not PROMETHEUS.exists():
        cannot_run(f"{PROMETHEUS} is missing: install Debian's prometheus package (make setup)")
    server = start_prometheus(tmp_path_factory.mktemp("prometheus") / "server",
                              daemon.url.removeprefix("http://"), [ALERTS])
    yield server
    server.stop()
    assert not server.workdir.exists()


def test_prometheus_scrapes_the_daemon(prometheus, daemon):
    up = prometheus.wait(f'up{{job="{JOB}"}}', lambda r: r and all(v == 1 for v in r.values()),
                         "up == 1")
    assert up == {(("__name__", "up"), ("instance", daemon.url.removeprefix("http://")),
                   ("job", JOB)): 1.0}


def test_loopback_connections_reach_prometheus(prometheus, daemon):
    unseen_before = unseen(daemon)
    run = client_closed(quiet_port(), CONNECTIONS)
    port = str(run.port)
    closes = (f'tcpstate_transitions_total{{job="{JOB}",port="{port}",'
              f'from_state="FIN_WAIT2",to_state="CLOSE"}}')

    def all_closes(result: dict) -> bool:
        # Every close, but those the daemon counts as unseen: the kernel may skip the program
        # (counted: program_not_run; seen here, 6 of 20 clients' FIN_WAIT2 and CLOSE in one
        # softirq run), and on top of some threads it runs no BPF program at all (the life is
        # found ended unseen).
        values = list(result.values())
        return len(values) == 1 and CONNECTIONS - (unseen(daemon) - unseen_before) <= values[0] <= CONNECTIONS

    try:
        found = prometheus.wait(closes, all_closes, f"{CONNECTIONS} active closes, but those counted as unseen")
    except PrometheusError as exc:
        text = daemon.metrics()
        port_lines = [line for line in text.splitlines() if f'port="{port}"' in line and "transitions" in line]
        raise PrometheusError(f"{exc}\ndaemon now: {port_lines}\nunseen since the start: "
                              f"{unseen(daemon) - unseen_before}") from None
    # What Prometheus has is what the daemon exports.
    assert list(samples(daemon.metrics(), "tcpstate_transitions_total", port=port, from_state="FIN_WAIT2",
                        to_state="CLOSE").values()) == list(found.values())

    timewait = prometheus.wait(f'tcpstate_sockets{{job="{JOB}",port="{port}",state="TIME_WAIT"}}',
                               lambda r: len(r) == 1 and list(r.values())[0] > 0, "TIME_WAIT sockets")
    # A late ACK's reset can end a TIME_WAIT early (RFC 1337): at most CONNECTIONS.
    assert 0 < list(timewait.values())[0] <= CONNECTIONS

    # The series the stuck alerts select exist for the port, at 0: the rules see the
    # daemon's labels as they are, and nothing here is stuck.
    for promql in (f'tcpstate_stuck_total{{port="{port}",state="LAST_ACK"}}',
                   f'tcpstate_stuck_total{{port="{port}",state="TIME_WAIT"}}',
                   f'tcpstate_stuck_sockets{{port="{port}",state="CLOSE_WAIT"}}'):
        prometheus.wait(promql, lambda r: list(r.values()) == [0], promql)
    lost = prometheus.wait(f'tcpstate_events_lost_total{{job="{JOB}"}}', lambda r: len(r) == 2,
                           "both reasons of lost events")
    assert {dict(labels)["reason"] for labels in lost} == {"ring_buffer_full", "program_not_run"}


def alert_expr(name: str) -> str:
    (expr,) = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
               for rule in group["rules"] if rule.get("alert") == name]
    return expr


def threshold_lowered(name: str) -> str:
    """An alert's expression with its final threshold made ``>= 0``: every value shows."""
    expr, n = re.subn(r">\s*[\d.]+\s*$", ">= 0", alert_expr(name))
    assert n == 1, expr
    return expr


def refused_connects(port: int, n: int) -> None:
    for _ in range(n):
        with socket.socket() as client:
            client.settimeout(5)
            with pytest.raises(ConnectionRefusedError):
                client.connect(("127.0.0.1", port))


def sysctl(name: str) -> list[int]:
    return [int(v) for v in Path("/proc/sys", name.replace(".", "/")).read_text().split()]


def test_kernel_limits_reach_the_pressure_rules(prometheus, daemon):
    instance = daemon.url.removeprefix("http://")
    low, high = sysctl("net.ipv4.ip_local_port_range")
    limits = prometheus.wait(f'tcpstate_kernel_limit{{job="{JOB}"}}', lambda r: len(r) == 2, "kernel limits")
    assert {dict(k)["name"]: v for k, v in limits.items()} == {
        "tcp_max_tw_buckets": sysctl("net.ipv4.tcp_max_tw_buckets")[0], "ephemeral_ports": high - low + 1}
    # The rules' vector matching works on the daemon's real label sets (no
    # many-to-many error, one result per instance): the threshold lowered to 0.
    buckets = prometheus.wait(threshold_lowered("TcpStateTimeWaitBucketsPressure"), lambda r: len(r) == 1,
                              "TIME_WAIT / tcp_max_tw_buckets")
    assert [dict(k) for k in buckets] == [{"instance": instance}]
    port = quiet_port()
    client_closed(port, 3)
    ephemeral = prometheus.wait(threshold_lowered("TcpStateEphemeralPortPressure"),
                                lambda r: any(dict(k).get("port") == str(port) for k in r),
                                "TIME_WAIT / ephemeral ports")
    assert all(set(dict(k)) == {"instance", "port"} and dict(k)["instance"] == instance for k in ephemeral)


def test_refused_connects_reach_the_failure_ratio_rule(prometheus, daemon):
    port = str(quiet_port())
    failures = f'tcpstate_connect_failures_total{{job="{JOB}",port="{port}",reason="refused"}}'
    connects = (f'tcpstate_transitions_total{{job="{JOB}",port="{port}",'
                f'from_state="CLOSE",to_state="SYN_SENT"}}')
    # A counter's first sample shows no increase to rate(): one failure first, so
    # that Prometheus has the series before the rest.
    refused_connects(int(port), 1)
    for promql in (failures, connects):
        prometheus.wait(promql, lambda r: list(r.values()) == [1], promql)
    refused_connects(int(port), REFUSED - 1)
    for promql in (failures, connects):
        prometheus.wait(promql, lambda r: list(r.values()) == [REFUSED], promql)
    # The whole expression, thresholds and traffic floor included: failures and
    # connects carry the same port label, so every connect to this port failed.
    ratio = prometheus.wait(alert_expr("TcpStateConnectFailureRatioHigh"),
                            lambda r: any(dict(k).get("port") == port for k in r), "the failure ratio")
    instance = daemon.url.removeprefix("http://")
    assert ratio[(("instance", instance), ("port", port))] == pytest.approx(1, rel=0.2)
    # And the server's own evaluation of the rule: pending (it fires after 10 minutes).
    pending = prometheus.wait(f'ALERTS{{alertname="TcpStateConnectFailureRatioHigh",port="{port}"}}',
                              lambda r: len(r) == 1, "the ratio alert pending")
    assert dict(next(iter(pending))) == {"__name__": "ALERTS", "alertname": "TcpStateConnectFailureRatioHigh",
                                         "alertstate": "pending", "instance": instance, "port": port,
                                         "severity": "warning"}


def test_alert_rules_load_and_evaluate(prometheus):
    expected = {group["name"]: [rule["alert"] for rule in group["rules"]]
                for group in yaml.safe_load(ALERTS.read_text())["groups"]}
    daemon_alerts = ("TcpStateTracerDown", "TcpStateTracerAbsent")

    def settled(groups: dict[str, list]) -> bool:
        rules = [r for rs in groups.values() for r in rs]
        # Before the first scrape absent(up) is pending for a moment; then inactive.
        return bool(rules) and all(r["health"] != "unknown" for r in rules) and all(
            r["state"] == "inactive" for r in rules if r["name"] in daemon_alerts)

    deadline = time.monotonic() + 30
    while not settled(groups := {g["name"]: g["rules"] for g in prometheus.api("rules")["groups"]}):
        assert time.monotonic() < deadline, (
            f"rules not evaluated, or the daemon's alerts not quiet, within 30 s: {groups}")
        time.sleep(0.25)
    assert {name: [r["name"] for r in rules] for name, rules in groups.items()} == expected
    for rule in (r for rules in groups.values() for r in rules):
        assert rule["type"] == "alerting"
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule
