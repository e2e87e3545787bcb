"""What `watch` and `replay` print: the time each socket spent in the state it left."""

from __future__ import annotations

import io
import json

import pytest

from tracer.console import StateTimes, TransitionPrinter
from tracer.core.states import EventKind, Role, TcpState as S


def test_the_time_in_a_state_is_known_from_the_transition_into_it(event):
    times = StateTimes()
    steps = [  # (socket, old, new, ts, spent printed)
        (1, S.CLOSE, S.SYN_SENT, 100, -1),  # first seen
        (1, S.SYN_SENT, S.ESTABLISHED, 130, 30),
        (2, S.ESTABLISHED, S.FIN_WAIT1, 140, -1),  # first seen mid-life
        (1, S.FIN_WAIT1, S.FIN_WAIT2, 150, -1),  # ESTABLISHED -> FIN_WAIT1 never seen
        (1, S.FIN_WAIT2, S.CLOSE, 175, 25),
        (1, S.CLOSE, S.SYN_SENT, 200, -1),  # a new socket at the address: its own first
        (2, S.CLOSE, S.SYN_SENT, 210, -1),  # born where another was: its end never seen
    ]
    for sk, old, new, ts, spent in steps:
        assert times.spent_ns(event(sk, old, new, ts_ns=ts)) == spent, (sk, old, new)
    assert len(times) == 2


def test_a_reset_has_no_time_in_a_state_and_leaves_the_socket_where_it_was(event):
    times = StateTimes()
    times.spent_ns(event(1, S.CLOSE, S.SYN_SENT, ts_ns=10))
    assert times.spent_ns(event(1, 0, 0, kind=EventKind.RESET_RX, ts_ns=20)) == -1
    assert times.spent_ns(event(1, S.SYN_SENT, S.CLOSE, ts_ns=40)) == 30
    assert len(times) == 0, "a closed socket is forgotten"


def test_the_sockets_followed_are_bounded_the_quietest_forgotten_first(event):
    times = StateTimes(limit=2)
    for sk, ts in ((1, 0), (2, 1), (1, 2), (3, 3)):  # socket 2 is now the quietest
        times.spent_ns(event(sk, S.ESTABLISHED, S.FIN_WAIT1, ts_ns=ts))
    assert len(times) == 2
    assert times.spent_ns(event(1, S.FIN_WAIT1, S.FIN_WAIT2, ts_ns=12)) == 10
    assert times.spent_ns(event(2, S.FIN_WAIT1, S.FIN_WAIT2, ts_ns=13)) == -1
    with pytest.raises(ValueError):
        StateTimes(limit=0)


def test_other_ports_are_followed_but_not_printed(event):
    out = io.StringIO()
    printer = TransitionPrinter(out, True, 0, port=80)
    evs = [event(1, S.CLOSE, S.SYN_SENT, ts_ns=1_000, service_port=443, role=Role.ACTIVE),
           event(2, S.CLOSE, S.SYN_SENT, ts_ns=2_000, service_port=80, role=Role.ACTIVE),
           event(2, S.SYN_SENT, S.ESTABLISHED, ts_ns=5_000, service_port=80, role=Role.ACTIVE)]
    for ev in evs:
        printer.show(ev, False)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(o["sk"], o["prev_state_seconds"]) for o in lines] == [("0x2", None), ("0x2", 3e-06)]
    assert len(printer.times) == 2
