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

from collections.abc import Iterable

from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, EventKind, TcpState

CLOSERS = ("local", "peer", "simultaneous", "none")
HOWS = ("close", "shutdown_wr", "shutdown_rdwr", "reset_sent", "reset_received", "timeout")

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


class CloseTally:
    """Counts each connection's close into ``outcome`` (Outcomes.closed) as its socket
    reaches CLOSE. One that closed with neither a FIN of ours nor a reset waits
    here: the kernel sends an abortive close's reset right after the CLOSE, when the
    socket is gone from the table; it is counted when that reset comes, or as a
    timeout once GRACE_NS has passed without one."""

    GRACE_NS = 1_000_000_000
    MAX_PENDING = 1 << 16  # past it the oldest waiting are counted as timeouts

    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.pending: dict[int, tuple[int, str, int]] = {}  # socket -> (port, closer, closed at), oldest first

    def closed(self, sk: int, port: int, closer: str, fin: bool, flags: int, reset_kind: int, ts: int) -> None:
        how = how_of(fin, flags, reset_kind)
        if how is not None:
            self.outcome.closed(port, closer, how)
            return
        pending = self.pending
        pending.pop(sk, None)
        pending[sk] = (port, closer, ts)
        if len(pending) > self.MAX_PENDING:
            old = next(iter(pending))
            p, c, _ = pending.pop(old)
            self.outcome.closed(p, c, "timeout")

    def reset(self, sk: int, kind: int) -> bool:
        """A reset of a socket no longer in the table: True when it ends a close waiting here."""
        got = self.pending.pop(sk, None)
        if got is None:
            return False
        self.outcome.closed(got[0], got[1], "reset_received" if kind == _RESET_RX else "reset_sent")
        return True

    def settle(self, now_ns: int) -> None:
        """Counts the closes that waited GRACE_NS for a reset as timeouts."""
        pending = self.pending
        while pending:
            sk = next(iter(pending))
            port, closer, ts = pending[sk]
            if now_ns - ts < self.GRACE_NS:
                return
            del pending[sk]
            self.outcome.closed(port, closer, "timeout")
