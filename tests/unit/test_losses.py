"""The daemon says in its log when the kernel's events were lost (daemon.Housekeeper.log_losses)."""

from __future__ import annotations

import logging

from tracer.core.clock import FakeClock
from tracer.core.tracker import Tracker
from tracer.daemon import Housekeeper


def test_a_loss_is_logged_once_with_what_it_means_then_at_most_every_ten_seconds(caplog, monkeypatch):
    lost = {"ring_buffer_full": 0, "program_not_run": 0}
    hk = Housekeeper(Tracker(60 * 10**9, 100), FakeClock(), reconcile_s=3600, lost=lambda: dict(lost))
    now = [1000.0]
    monkeypatch.setattr("tracer.daemon.time.monotonic", lambda: now[0])
    caplog.set_level(logging.WARNING, logger="tracer.daemon")

    hk.log_losses()
    assert caplog.messages == []
    lost["program_not_run"] = 6
    hk.log_losses()
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("6 transitions lost (program_not_run, 6 since the start): "
                                         "the kernel did not run the program")
    lost["program_not_run"] = 8
    now[0] += 9
    hk.log_losses()
    assert len(caplog.messages) == 1, "not again within ten seconds"
    now[0] += 1
    lost["ring_buffer_full"] = 3
    hk.log_losses()
    assert sorted(m.split(":")[0] for m in caplog.messages[1:]) == [
        "2 transitions lost (program_not_run, 8 since the start)",
        "3 transitions lost (ring_buffer_full, 3 since the start)"]


def test_a_source_without_losses_logs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="tracer.daemon")
    Housekeeper(Tracker(60 * 10**9, 100), FakeClock(), reconcile_s=3600).log_losses()
    assert caplog.messages == []
