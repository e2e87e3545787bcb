"""How a connection's socket closed: who sent the first FIN, and with what.

From the states the socket visited (the tracepoint's) and what the program added:
resets (tcp:tcp_send_reset, tcp:tcp_receive_reset), and whether our FIN came from
shutdown() (the record's TCPSTATE_F_SHUT_* flags, set from the thread's shutdown()
in flight as the FIN transition happened).

- closer: ``local`` (ESTABLISHED -> FIN_WAIT1: this end's FIN went first), ``peer``
  (ESTABLISHED -> CLOSE_WAIT), ``simultaneous`` (FIN_WAIT1 -> CLOSING: both FINs
  crossed), ``none`` (no FIN: a reset or a timeout ended it).
- how this end finished: ``close``, ``shutdown_wr``, ``shutdown_rdwr``, ``reset_sent``
  (SO_LINGER 0, or close() with unread data), ``reset_received``, ``timeout`` (closed
  with neither a FIN of ours nor a reset: retransmissions or keepalives gave up).

Only connections count: sockets that reached ESTABLISHED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, EventKind, TcpState

CLOSERS = ("local", "peer", "simultaneous", "none")
HOWS = ("close", "shutdown_wr", "shutdown_rdwr", "reset_sent", "reset_received", "timeout")
# A life carries how it closed as a small code (lifecycle.RawLife.how): 0 while that
# is not known (an open socket that sent no FIN yet, a listener, a failed connect).
HOW_CODES = {how: i for i, how in enumerate(HOWS, 1)}
HOW_NAMES: tuple[str | None, ...] = (None, *HOWS)

_ESTABLISHED = TcpState.ESTABLISHED.value
_FIN_WAIT1 = TcpState.FIN_WAIT1.value
_CLOSE_WAIT = TcpState.CLOSE_WAIT.value
_LAST_ACK = TcpState.LAST_ACK.value
_CLOSING = TcpState.CLOSING.value
_FIN_WAIT2 = TcpState.FIN_WAIT2.value
_PEER_FIRST = frozenset({_CLOSE_WAIT, _LAST_ACK})  # the peer's FIN came before ours
_LOCAL_FIRST = frozenset({_FIN_WAIT1, _FIN_WAIT2, _CLOSING})  # ours went first
_OUR_FIN = frozenset({_FIN_WAIT1, _FIN_WAIT2, _CLOSING, _LAST_ACK})
_RESET_RX = EventKind.RESET_RX.value
_RESET_TX = EventKind.RESET_TX.value


def closer_of(states: Iterable[int]) -> str | None:
    """Who sent the first FIN, from the states visited in order (a socket first seen
    mid-life starts where the daemon found it); None for a socket that was never a
    connection (a failed connect, a listener)."""
    states = list(states)
    for i, state in enumerate(states):
        if state in _PEER_FIRST:
            return "peer"
        if state in _LOCAL_FIRST:
            return "simultaneous" if _CLOSING in states[i:] else "local"
    return "none" if _ESTABLISHED in states else None


def sent_fin(states: Iterable[int]) -> bool:
    """Whether this end sent a FIN: it reached FIN_WAIT1 or LAST_ACK (or, first seen
    after it, FIN_WAIT2 or CLOSING)."""
    return not _OUR_FIN.isdisjoint(states)


def how_of(fin: bool, flags: int, reset_kind: int) -> str | None:
    """How this end finished, given whether it sent a FIN, the record's flags and the
    kind of the last reset the socket saw (0: none). None while it cannot be told yet:
    a socket closed with neither a FIN nor a reset, whose reset the kernel sends just
    after the CLOSE (SO_LINGER 0, unread data), or never (a timeout)."""
    if reset_kind == _RESET_RX:
        return "reset_received"
    if reset_kind == _RESET_TX:
        return "reset_sent"
    if not fin:
        return None
    if flags & F_SHUT_RDWR:
        return "shutdown_rdwr"
    if flags & F_SHUT_WR:
        return "shutdown_wr"
    return "close"


def how_code(states: Iterable[int], flags: int, reset_kind: int) -> int:
    """The life's code of how this end finished (HOW_CODES), 0 while not known."""
    how = how_of(sent_fin(states), flags, reset_kind)
    return 0 if how is None else HOW_CODES[how]


class CloseTally:
    """The closes that how_of cannot tell yet, counted into ``outcome`` (Outcomes.closed)
    once it can; the others the tracker counts as their socket reaches CLOSE. One that
    closed with neither a FIN of ours nor a reset waits here: the kernel sends an abortive close's reset right after the CLOSE, when the
    socket is gone from the table; it is counted when that reset comes, or as a
    timeout once GRACE_NS has passed without one. Its life for the timeline waits with
    it and goes to ``pend(life, how code)`` once how it closed is known, so that its
    row is written once, and right."""

    GRACE_NS = 1_000_000_000
    MAX_PENDING = 1 << 16  # past it the oldest waiting are counted as timeouts

    def __init__(self, outcome, pend: Callable[[object, int], None] | None = None) -> None:
        self.outcome = outcome
        self.pend = pend
        # socket -> (port, closer, closed at, its life for the journal or None), oldest first
        self.pending: dict[int, tuple[int, str, int, bytes | tuple | None]] = {}

    def wait(self, sk: int, port: int, closer: str, ts: int, life: bytes | tuple | None) -> None:
        """A connection that closed with neither a FIN of ours nor a reset: how is told
        by what follows (``reset``, ``settle``); ``life`` waits for it."""
        pending = self.pending
        earlier = pending.pop(sk, None)
        if earlier is not None:  # its address was reused before a reset came: that one timed out
            self._finish(earlier, "timeout")
        pending[sk] = (port, closer, ts, life)
        if len(pending) > self.MAX_PENDING:
            self._finish(pending.pop(next(iter(pending))), "timeout")

    def _finish(self, waiting: tuple, how: str) -> None:
        port, closer, _ts, life = waiting
        self.outcome.closed(port, closer, how)
        if life is not None and self.pend is not None:
            self.pend(life, HOW_CODES[how])

    def reset(self, sk: int, kind: int) -> bool:
        """A reset of a socket no longer in the table: True when it ends a close waiting here."""
        got = self.pending.pop(sk, None)
        if got is None:
            return False
        self._finish(got, "reset_received" if kind == _RESET_RX else "reset_sent")
        return True

    def settle(self, now_ns: int) -> None:
        """Counts the closes that waited GRACE_NS for a reset as timeouts."""
        pending = self.pending
        while pending:
            sk = next(iter(pending))
            if now_ns - pending[sk][2] < self.GRACE_NS:
                return
            self._finish(pending.pop(sk), "timeout")

    def release(self) -> None:
        """The daemon stops: the waiting lives go as they are, how they closed not known."""
        pending, self.pending = self.pending, {}
        if self.pend is not None:
            for _port, _closer, _ts, life in pending.values():
                if life is not None:
                    self.pend(life, 0)
