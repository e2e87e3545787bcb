"""The collector: what /metrics says, read back the way Prometheus's client tests do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tracer.core import record
from tracer.core.detector import Rules
from tracer.core.kernel_socket import KernelSocket
from tracer.core.ports import PortLabels
from tracer.core.states import EventKind, Role, TcpState
from tracer.core.tracker import Tracker
from tracer.metrics import (
    HealthFamilies,
    KernelFamilies,
    TableFamilies,
    TcpStateCollector,
    build_info,
    port_label_values,
)
from tracer.sources.replay import ReplaySource

FIXTURE = Path(__file__).parent.parent / "fixtures" / "loopback-3-client-close.jsonl"
EPHEMERAL = range(32768, 61000)
S = TcpState


def collector_for(path: Path, max_ports: int = 100,
                  baseline: list[KernelSocket] | None = None) -> tuple[CollectorRegistry, TcpStateCollector]:
    source = ReplaySource(path)
    tracker = Tracker(60 * 10**9, 10_000, Rules.build(30))
    if baseline:
        tracker.load_baseline(baseline, 0, EPHEMERAL)
    while (batch := source.read()) is not None:
        tracker.apply_batch(batch)
    labels = PortLabels(max_ports, EPHEMERAL)
    limits = {"tcp_max_tw_buckets": 131072, "ephemeral_ports": len(EPHEMERAL)}
    collector = TcpStateCollector(KernelFamilies(source, labels), TableFamilies(tracker, labels),
                                  HealthFamilies(labels, limits, build_info(source.bcc_version)), labels)
    registry = CollectorRegistry()
    registry.register(collector)
    return registry, collector


def write_events(path: Path, events: list[tuple]) -> Path:
    path.write_text("".join(json.dumps(record.to_json(ev)) + "\n" for ev in events))
    return path


def connection(n: int, port: int, client_port: int, ts: int, listen: bool = False) -> list[tuple]:
    """One client-closed connection on loopback (10 transitions), optionally with its listener."""
    lo = bytes([127, 0, 0, 1]) + bytes(12)
    comm = b"t".ljust(16, b"\0")
    client, server, listener = 0x10000 + 3 * n, 0x10001 + 3 * n, 0x10002 + 3 * n

    def ev(sk, role, old, new, sport, dport, kind=EventKind.STATE):
        return (ts, sk, lo, lo, 1, sport, dport, port, 2, kind, old, new, role, 0, comm)

    out = [ev(listener, Role.LISTENER, S.CLOSE, S.LISTEN, port, 0)] if listen else []
    for sk, role, old, new, sport, dport in [
        (client, Role.ACTIVE, S.CLOSE, S.SYN_SENT, 0, port),
        (client, Role.ACTIVE, S.SYN_SENT, S.ESTABLISHED, client_port, port),
        (server, Role.PASSIVE, S.LISTEN, S.SYN_RECV, port, client_port),
        (server, Role.PASSIVE, S.SYN_RECV, S.ESTABLISHED, port, client_port),
        (client, Role.ACTIVE, S.ESTABLISHED, S.FIN_WAIT1, client_port, port),
        (server, Role.PASSIVE, S.ESTABLISHED, S.CLOSE_WAIT, port, client_port),
        (server, Role.PASSIVE, S.CLOSE_WAIT, S.LAST_ACK, port, client_port),
        (client, Role.ACTIVE, S.FIN_WAIT1, S.FIN_WAIT2, client_port, port),
        (client, Role.ACTIVE, S.FIN_WAIT2, S.CLOSE, client_port, port),
        (server, Role.PASSIVE, S.LAST_ACK, S.CLOSE, port, client_port),
    ]:
        ts += 1000
        out.append(ev(sk, role, old, new, sport, dport))
    return out


def test_replayed_connections_on_metrics():
    registry, _ = collector_for(FIXTURE)
    value = registry.get_sample_value
    assert value("tcpstate_transitions_total", {"port": "20001", "from_state": "FIN_WAIT2", "to_state": "CLOSE"}) == 3
    assert value("tcpstate_transitions_total", {"port": "20001", "from_state": "CLOSE", "to_state": "LISTEN"}) == 1
    assert value("tcpstate_sockets", {"port": "20001", "state": "TIME_WAIT"}) == 3
    assert value("tcpstate_timewait_entered_total", {"port": "20001"}) == 3
    # SYN_SENT: the client's connect latency, once per connection.
    assert value("tcpstate_state_duration_seconds_count", {"port": "20001", "state": "SYN_SENT"}) == 3
    assert value("tcpstate_state_duration_seconds_bucket",
                 {"port": "20001", "state": "SYN_SENT", "le": "+Inf"}) == 3
    assert value("tcpstate_state_duration_seconds_bucket",
                 {"port": "20001", "state": "SYN_SENT", "le": "1e-05"}) is not None
    assert value("tcpstate_state_duration_seconds_bucket",
                 {"port": "20001", "state": "SYN_SENT", "le": "600"}) == 3
    for role in ("active", "passive"):
        assert value("tcpstate_connection_duration_seconds_count", {"port": "20001", "role": role}) == 3
    assert value("tcpstate_events_received_total") == 32
    assert value("tcpstate_kernel_limit", {"name": "tcp_max_tw_buckets"}) == 131072
    assert value("tcpstate_build_info", {"version": "0.1.0", "kernel": os.uname().release, "bcc": "none"}) == 1


def test_connect_refused_timed_out_and_without_a_local_port_are_told_apart(tmp_path):
    lo = bytes([127, 0, 0, 1]) + bytes(12)
    comm = bytes(16)

    def ev(ts, sk, old, new, sport, kind=EventKind.STATE):
        return (ts, sk, lo, lo, 1, sport, 9999, 9999, 2, kind, old, new, Role.ACTIVE, 0, comm)

    events = [
        ev(1, 0x1, S.CLOSE, S.SYN_SENT, 0), ev(2, 0x1, 0, 0, 40000, kind=EventKind.RESET_RX),
        ev(3, 0x1, S.SYN_SENT, S.CLOSE, 40000),
        ev(4, 0x2, S.CLOSE, S.SYN_SENT, 0), ev(5, 0x2, S.SYN_SENT, S.SYN_SENT, 40001, kind=EventKind.RETRANSMIT),
        ev(6, 0x2, S.SYN_SENT, S.CLOSE, 40001),
        # No free local port: closed before one was bound (EADDRNOTAVAIL).
        ev(7, 0x3, S.CLOSE, S.SYN_SENT, 0), ev(8, 0x3, S.SYN_SENT, S.CLOSE, 0),
    ]
    registry, _ = collector_for(write_events(tmp_path / "c.jsonl", events))
    value = registry.get_sample_value
    assert value("tcpstate_connect_failures_total", {"port": "9999", "reason": "refused"}) == 1
    assert value("tcpstate_connect_failures_total", {"port": "9999", "reason": "timeout"}) == 1
    assert value("tcpstate_connect_failures_total", {"port": "9999", "reason": "no_local_port"}) == 1
    assert value("tcpstate_resets_total", {"port": "9999", "direction": "received"}) == 1
    assert value("tcpstate_retransmits_total", {"port": "9999", "state": "SYN_SENT"}) == 1


def test_ports_past_the_cap_are_folded_with_every_count_kept(tmp_path):
    events = []
    for i in range(60):
        events += connection(i, 10000 + i, 40000 + i, ts=i * 100_000, listen=True)
    registry, collector = collector_for(write_events(tmp_path / "many.jsonl", events), max_ports=20)
    families = list(collector.collect())
    assert len(port_label_values(families)) == 21
    assert "other" in port_label_values(families)
    transitions = [s for m in families if m.name == "tcpstate_transitions" for s in m.samples
                   if s.name == "tcpstate_transitions_total"]
    assert sum(s.value for s in transitions) == 60 * 11
    assert registry.get_sample_value("tcpstate_ports_folded") == 40
    # Decisions stay: a scrape later, the same ports have the same labels.
    again = list(collector.collect())
    assert port_label_values(again) == port_label_values(families)


def test_ephemeral_ports_without_a_listener_are_never_labels(tmp_path):
    events = connection(0, 45000, 40000, ts=0) + connection(1, 8080, 40001, ts=100_000, listen=True)
    _, collector = collector_for(write_events(tmp_path / "e.jsonl", events))
    assert port_label_values(list(collector.collect())) == {"8080", "other"}


def test_a_port_listened_on_before_the_start_keeps_its_label_though_ephemeral(tmp_path):
    # Only the socket table knows 45000 is listened on (loaded at start, no CLOSE -> LISTEN
    # counted); the kernel's counts name the port first. Labels are decided over both.
    lo = bytes([127, 0, 0, 1]) + bytes(12)
    listener = KernelSocket(netns=1, family=record.AF_INET, saddr=lo, sport=45000, daddr=bytes(16), dport=0,
                            state=S.LISTEN)
    events = connection(0, 45000, 40000, ts=1000)
    _, collector = collector_for(write_events(tmp_path / "b.jsonl", events), baseline=[listener])
    assert port_label_values(list(collector.collect())) == {"45000"}


def test_exposition_is_lint_clean():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool (Debian package prometheus) is missing: run make setup")
        pytest.skip("promtool missing")
    registry, _ = collector_for(FIXTURE)
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout and not result.stderr, (
        result.stdout.decode() + result.stderr.decode())


def test_a_port_that_connects_has_zero_failure_series():
    registry, _ = collector_for(FIXTURE)
    for reason in ("refused", "timeout"):
        assert registry.get_sample_value("tcpstate_connect_failures_total", {"port": "20001", "reason": reason}) == 0
