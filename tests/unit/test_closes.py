"""Who closed first and how, from the states a socket visited, its flags and its resets;
an abortive close's late reset; the watch line of a FIN made by shutdown()."""

from __future__ import annotations

import io

import pytest

from tracer.console import TransitionPrinter
from tracer.core.closes import CloseTally, closer_of, how_of, sent_fin
from tracer.core.outcomes import Outcomes
from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, EventKind, Role, TcpState

S = TcpState


@pytest.mark.parametrize("states, closer", [
    ([S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT1, S.FIN_WAIT2], "local"),
    ([S.SYN_RECV, S.ESTABLISHED, S.CLOSE_WAIT, S.LAST_ACK], "peer"),
    ([S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT1, S.CLOSING], "simultaneous"),
    ([S.SYN_SENT, S.ESTABLISHED], "none"),
    ([S.LAST_ACK], "peer"),        # first seen mid-life (the baseline)
    ([S.FIN_WAIT2], "local"),
    ([S.SYN_SENT], None),          # a connect that failed: no connection
    ([S.LISTEN], None),
])
def test_the_closer_is_the_end_whose_fin_went_first(states, closer):
    assert closer_of(states) == closer


def test_how_this_end_finished():
    assert how_of(True, 0, 0) == "close"
    assert how_of(True, F_SHUT_WR, 0) == "shutdown_wr"
    assert how_of(True, F_SHUT_RDWR | F_SHUT_WR, 0) == "shutdown_rdwr"
    assert how_of(False, 0, EventKind.RESET_TX) == "reset_sent"
    assert how_of(True, 0, EventKind.RESET_RX) == "reset_received"
    assert how_of(False, 0, 0) is None, "neither a FIN nor a reset yet"
    assert sent_fin([S.ESTABLISHED, S.CLOSE_WAIT, S.LAST_ACK]) and not sent_fin([S.ESTABLISHED, S.CLOSE_WAIT])


def test_an_abortive_close_is_counted_when_its_late_reset_comes_else_as_a_timeout():
    o = Outcomes()
    t = CloseTally(o)
    t.closed(0x1, 80, "none", False, 0, 0, ts=0)
    t.closed(0x2, 80, "peer", False, 0, 0, ts=0)
    assert o.closes == {} and len(t.pending) == 2
    assert t.reset(0x1, EventKind.RESET_TX) and not t.reset(0x9, EventKind.RESET_TX)
    t.settle(CloseTally.GRACE_NS - 1)
    assert o.closes == {(80, "none", "reset_sent"): 1}
    t.settle(CloseTally.GRACE_NS)
    assert o.closes == {(80, "none", "reset_sent"): 1, (80, "peer", "timeout"): 1} and not t.pending


def test_watch_names_a_fin_sent_by_shutdown(event):
    out = io.StringIO()
    p = TransitionPrinter(out, False, 0)
    p.show(event(0x1, S.ESTABLISHED, S.FIN_WAIT1, sport=40000, dport=80, service_port=80, role=Role.ACTIVE,
                 flags=F_SHUT_WR), False)
    p.show(event(0x2, S.ESTABLISHED, S.FIN_WAIT1, sport=40001, dport=80, service_port=80, role=Role.ACTIVE), False)
    lines = out.getvalue().splitlines()
    assert "ESTABLISHED -> FIN_WAIT1 by shutdown(SHUT_WR)" in lines[1]
    assert "shutdown" not in lines[2]
