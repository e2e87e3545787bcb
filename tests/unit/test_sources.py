"""Both sources answer every call EventSource declares, with the same parameters: the
daemon, `watch` and `replay` call them without asking what a source can do."""

from __future__ import annotations

import inspect

import pytest

from tracer.sources import EventSource
from tracer.sources.bcc import BccSource
from tracer.sources.replay import ReplaySource

DECLARED = sorted(name for name, value in vars(EventSource).items()
                  if callable(value) and not name.startswith("_"))


def test_the_protocol_declares_what_the_reader_the_reconciler_and_watch_call():
    assert DECLARED == ["backlog", "close", "lost", "read_records", "seed_listeners", "sweep"]


@pytest.mark.parametrize("source", [BccSource, ReplaySource])
@pytest.mark.parametrize("name", DECLARED)
def test_every_source_answers_every_declared_call(source, name):
    declared = list(inspect.signature(getattr(EventSource, name)).parameters)
    implemented = list(inspect.signature(getattr(source, name)).parameters)
    assert implemented == declared, f"{source.__name__}.{name}"
