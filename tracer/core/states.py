"""TCP states and the other small vocabularies of an event.

TcpState is numbered like the kernel's include/net/tcp_states.h, so the numbers in
a record are the enum values; names everywhere else come from here.
"""

from __future__ import annotations

from enum import IntEnum


class TcpState(IntEnum):
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12

    @classmethod
    def parse(cls, text: str) -> "TcpState":
        """Accepts ``FIN_WAIT1``, ``fin-wait-1``, ``TCP_FIN_WAIT1`` (ss and kernel spellings)."""
        key = text.strip().upper().replace("-", "_")
        key = key.removeprefix("TCP_")
        key = {"FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2"}.get(key, key)
        try:
            return cls[key]
        except KeyError:
            raise ValueError(f"unknown TCP state {text!r}") from None


class Role(IntEnum):
    """Who opened the connection; decides which port is the service port."""

    UNKNOWN = 0
    ACTIVE = 1  # connect(): service port = remote port
    PASSIVE = 2  # accepted: service port = local port
    LISTENER = 3


class EventKind(IntEnum):
    STATE = 0  # sock:inet_sock_set_state
    RESET_RX = 1  # tcp:tcp_receive_reset
    RESET_TX = 2  # tcp:tcp_send_reset
    RETRANSMIT = 3  # tcp:tcp_retransmit_skb (and, counted only, tcp:tcp_retransmit_synack)


# Record flags (bpf/tcpstates.h TCPSTATE_F_*).
F_ROLE_INFERRED = 0x01
F_OWNER_INHERITED = 0x02
F_SHUT_WR = 0x04  # our FIN came from shutdown(SHUT_WR)
F_SHUT_RDWR = 0x08  # our FIN came from shutdown(SHUT_RDWR)

# An orderly active close ends in TIME_WAIT: the full socket goes from one of these
# to CLOSE and a timewait mini-socket takes over, which the tracepoint never reports.
ACTIVE_CLOSE_STATES = frozenset({TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, TcpState.CLOSING})

STATE_NAMES = {s.value: s.name for s in TcpState}
ROLE_NAMES = {r.value: r.name.lower() for r in Role}
