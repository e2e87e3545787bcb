"""Who closed first and how, from the states a socket visited, its flags and its resets;
an abortive close's late reset; the watch line of a FIN made by shutdown()."""

from __future__ import annotations

import io

import pytest

from tracer.console import TransitionPrinter
from tracer.core.closes import HOW_CODES, HOW_NAMES, CloseTally, closer_of, how_of, sent_fin
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
    t.wait(0x1, 80, "none", 0, None)
    t.wait(0x2, 80, "peer", 0, None)
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


def test_a_life_waits_with_its_close_and_goes_to_the_journal_with_the_verdict():
    o, pended = Outcomes(), []
    t = CloseTally(o, lambda life, how: pended.append((life, HOW_NAMES[how])))
    t.wait(0x1, 80, "none", 0, "first")
    t.wait(0x2, 80, "peer", 0, "second")
    t.wait(0x3, 80, "none", 0, None)  # no journal kept for it
    assert pended == []
    assert t.reset(0x1, EventKind.RESET_TX)
    assert pended == [("first", "reset_sent")]
    t.settle(CloseTally.GRACE_NS)
    assert pended == [("first", "reset_sent"), ("second", "timeout")]
    assert o.closes == {(80, "none", "reset_sent"): 1, (80, "peer", "timeout"): 1, (80, "none", "timeout"): 1}
    t.wait(0x4, 80, "none", 5, "at stop")
    t.release()  # the daemon stops before a reset or the grace: how is not known
    assert pended[-1] == ("at stop", None) and not t.pending


def test_a_sockets_retransmissions_and_resets_reach_its_stored_life_bounded(event):
    from tracer.core.lifecycle import MARKS_MAX
    from tracer.core.tracker import Tracker

    tracker = Tracker(60 * 10**9, 100, keep_lifecycles=True)
    who = dict(sport=80, dport=40000, service_port=80, role=Role.PASSIVE)
    tracker.apply_batch([event(0x1, S.LISTEN, S.SYN_RECV, ts_ns=1, **who),
                         event(0x1, S.SYN_RECV, S.ESTABLISHED, ts_ns=2, **who),
                         event(0x1, S.ESTABLISHED, S.CLOSE_WAIT, ts_ns=3, **who),
                         event(0x1, S.CLOSE_WAIT, S.LAST_ACK, ts_ns=4, **who)])
    tracker.drain_raw()
    tracker.apply_batch([event(0x1, S.LAST_ACK, S.LAST_ACK, kind=EventKind.RETRANSMIT, ts_ns=10 + i, **who)
                         for i in range(MARKS_MAX + 8)])
    (life,) = tracker.drain_raw()  # still open: its retransmissions changed it
    assert life[12] is None and life[13] == HOW_CODES["close"]
    marks = life[14]
    assert marks[0] == 8 and len(marks) == 1 + 3 * MARKS_MAX
    assert marks[1:4] == (EventKind.RETRANSMIT, S.LAST_ACK, 18) and marks[-1] == 10 + MARKS_MAX + 7
    tracker.apply_batch([event(0x1, 0, 0, kind=EventKind.RESET_RX, ts_ns=100, **who),
                         event(0x1, S.LAST_ACK, S.CLOSE, ts_ns=101, **who)])
    (life,) = tracker.drain_raw()
    assert life[12] == 101 and life[13] == HOW_CODES["reset_received"]
    assert life[14][-3:] == (EventKind.RESET_RX, S.LAST_ACK, 100)
