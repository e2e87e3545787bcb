"""The stuck scan (daemon.stuck.StuckScanner): the latest report, from the first moment."""

from __future__ import annotations

from tests.conftest import Healthy, make_event
from tracer.core.clock import FakeClock
from tracer.core.detector import Rules
from tracer.core.states import Role, TcpState as S
from tracer.core.tracker import Tracker


def test_a_report_is_there_before_the_first_round_and_each_scan_replaces_it():
    from tracer.daemon.stuck import StuckScanner

    clock = FakeClock(start_ns=10**9)
    tracker = Tracker(60 * 10**9, 100, Rules.build(30, {"CLOSE_WAIT": 5}))
    scanner = StuckScanner(tracker, clock)
    first = scanner.report
    assert first.at_ns == 10**9 and first.stuck == []
    tracker.apply(make_event(1, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=10**9, sport=8080, dport=50000,
                             service_port=8080, role=Role.PASSIVE))
    clock.advance(6)
    report = scanner.scan()
    assert scanner.report is report is not first
    assert [s.rule.state for s in report.stuck] == [S.CLOSE_WAIT]


def test_the_api_serves_the_scanners_latest_report():
    from prometheus_client import CollectorRegistry

    from tracer.daemon.stuck import StuckScanner
    from tracer.web import create_app

    clock = FakeClock(start_ns=10**9)
    tracker = Tracker(60 * 10**9, 100, Rules.build(30, {"CLOSE_WAIT": 5}))
    scanner = StuckScanner(tracker, clock)
    client = create_app(CollectorRegistry(), Healthy(), scanner, clock).test_client()
    assert client.get("/api/v1/stuck").get_json()["total"] == 0
    tracker.apply(make_event(1, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=10**9, sport=8080, dport=50000,
                             service_port=8080, role=Role.PASSIVE))
    clock.advance(6)
    scanner.scan()
    answer = client.get("/api/v1/stuck").get_json()
    assert answer["total"] == 1 and answer["scanned_at"] == clock.now()
    assert answer["sockets"][0]["state"] == "CLOSE_WAIT"
