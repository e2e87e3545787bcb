"""The daemon says in its log when the kernel's events were lost (daemon.losses.LossLogger)."""

from __future__ import annotations

import logging

from tracer.core.clock import FakeClock
from tracer.daemon.losses import LossLogger


def test_a_loss_is_logged_once_with_what_it_means_then_at_most_every_ten_seconds(caplog):
    lost = {"ring_buffer_full": 0, "program_not_run": 0}
    clock = FakeClock(start_ns=1000 * 10**9)
    losses = LossLogger(lambda: dict(lost), clock, every_s=10)
    caplog.set_level(logging.WARNING, logger="tracer.daemon")

    losses.log()
    assert caplog.messages == []
    lost["program_not_run"] = 6
    losses.log()
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("6 transitions lost (program_not_run, 6 since the start): "
                                         "the kernel did not run the program")
    lost["program_not_run"] = 8
    clock.advance(9)
    losses.log()
    assert len(caplog.messages) == 1, "not again within ten seconds"
    clock.advance(1)
    lost["ring_buffer_full"] = 3
    losses.log()
    assert sorted(m.split(":")[0] for m in caplog.messages[1:]) == [
        "2 transitions lost (program_not_run, 8 since the start)",
        "3 transitions lost (ring_buffer_full, 3 since the start)"]


def test_the_first_loss_is_logged_at_once_whatever_the_clock_says(caplog):
    caplog.set_level(logging.WARNING, logger="tracer.daemon")
    LossLogger(lambda: {"program_not_run": 1}, FakeClock(start_ns=0)).log()
    assert len(caplog.messages) == 1


def test_a_source_without_losses_logs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="tracer.daemon")
    LossLogger(dict, FakeClock()).log()
    assert caplog.messages == []
