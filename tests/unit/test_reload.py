"""SIGHUP reloads the stuck thresholds from the configuration; a bad file keeps the
rules in force and says why."""

from __future__ import annotations

import logging
import signal
import os
from types import SimpleNamespace

from tests.conftest import make_event
from tracer import config
from tracer.core.states import Role, TcpState as S
from tracer.core.tracker import Tracker
from tracer.daemon import reload_rules
from tracer.daemon.signals import ReloadSignal


def test_sighup_sets_a_flag_taken_once():
    hup = ReloadSignal()
    try:
        assert not hup.take()
        os.kill(os.getpid(), signal.SIGHUP)
        assert hup.take() and not hup.take()
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_reload_replaces_the_rules_and_a_bad_file_keeps_them(tmp_path, caplog):
    path = tmp_path / "tracer.yml"
    path.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: 600\n")
    load = lambda: config.load({"config_file": str(path)}, environ={})  # noqa: E731
    tracker = Tracker(60 * 10**9, 100, load().rules())
    running = SimpleNamespace(pipeline=SimpleNamespace(tracker=tracker))
    tracker.apply(make_event(1, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=0, sport=8080, dport=50000,
                             service_port=8080, role=Role.PASSIVE))
    assert tracker.scan(10 * 10**9).stuck == []  # 10 s in CLOSE_WAIT, threshold 600 s

    path.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: 5\n")
    with caplog.at_level(logging.INFO, logger="tracer.daemon"):
        assert reload_rules(running, load)
    assert "CLOSE_WAIT" in caplog.text and "reloaded" in caplog.text
    assert [s.rule.state for s in tracker.scan(10 * 10**9).stuck] == [S.CLOSE_WAIT]

    path.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: -1\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tracer.daemon"):
        assert not reload_rules(running, load)
    assert "not reloaded" in caplog.text and "CLOSE_WAIT" in caplog.text
    assert tracker.rules.rule(8080, S.CLOSE_WAIT).threshold_s == 5  # the rules in force stay
