"""The kernel's side of /metrics: what the program counts (transitions, resets, losses)
and the state of its maps, read from the source (sources.KernelCounters).

Transitions and resets are counted in the kernel, so they stay exact when the ring
buffer overflows and events never reach the tracker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from tracer.core.ports import PortLabels
from tracer.core.states import STATE_NAMES, EventKind, TcpState
from tracer.metrics.families import counter, fold, gauge, port_state
from tracer.sources import CountKey, KernelCounters

if TYPE_CHECKING:
    from tracer.sources.bcc import KernelStats

_STATE = EventKind.STATE.value
_RETRANSMIT = EventKind.RETRANSMIT.value
_LISTEN = TcpState.LISTEN.value
_CLOSE = TcpState.CLOSE.value
_SYN_SENT = TcpState.SYN_SENT.value
_RESET_DIRECTION = {EventKind.RESET_RX.value: "received", EventKind.RESET_TX.value: "sent"}


@dataclass(frozen=True)
class KernelSnapshot:
    counts: dict[CountKey, int]  # (service port, kind, old state, new state) -> count
    lost: dict[str, int]
    program: KernelStats | None  # None: no program (a replay)
    decode_errors: int

    def ports(self) -> set[int | None]:
        return {key[0] for key in self.counts}

    def listening(self) -> set[int]:
        """Ports something started listening on since the program attached."""
        return {p for (p, kind, _old, new) in self.counts if kind == _STATE and new == _LISTEN and p is not None}

    def connecting(self) -> set[int | None]:
        """Ports connect() was called for (CLOSE -> SYN_SENT)."""
        return {p for (p, kind, old, new) in self.counts if kind == _STATE and old == _CLOSE and new == _SYN_SENT}


class KernelFamilies:
    """Families from one KernelSnapshot; keeps nothing between scrapes."""

    def __init__(self, source: KernelCounters, labels: PortLabels) -> None:
        self._source = source
        self._labels = labels

    def snapshot(self) -> KernelSnapshot:
        source = self._source
        return KernelSnapshot(source.transition_counts(), source.lost(), source.kernel_stats(),
                              source.decode_errors())

    def counts(self, snap: KernelSnapshot) -> Iterator[Metric]:
        label = self._labels
        transitions = {(p, old, new): n for (p, kind, old, new), n in snap.counts.items() if kind == _STATE}
        yield counter(
            "tcpstate_transitions",
            "TCP state transitions reported by the kernel tracepoint sock:inet_sock_set_state, by "
            "service port (exact: counted in the kernel; an active close is FIN_WAIT2 -> CLOSE)",
            ["port", "from_state", "to_state"], fold(transitions, label),
            lambda k: [k[0], STATE_NAMES[k[1]], STATE_NAMES[k[2]]])
        resets = {(p, _RESET_DIRECTION[kind]): n for (p, kind, _o, _n), n in snap.counts.items()
                  if kind in _RESET_DIRECTION}
        yield counter(
            "tcpstate_resets", "TCP resets sent and received by sockets of each service port "
            "(tcp:tcp_send_reset, tcp:tcp_receive_reset; counted in the kernel)",
            ["port", "direction"], fold(resets, label))
        retransmits = {(p, old): n for (p, kind, old, _n), n in snap.counts.items() if kind == _RETRANSMIT}
        yield counter(
            "tcpstate_retransmits",
            "TCP segments retransmitted by sockets of each service port, by the state the socket was in "
            "(tcp:tcp_retransmit_skb; SYN_RECV also counts tcp:tcp_retransmit_synack; counted in the "
            "kernel): in LAST_ACK, FIN_WAIT1 or CLOSING they are FINs nobody acknowledges",
            ["port", "state"], fold(retransmits, label), port_state)

    def losses(self, snap: KernelSnapshot) -> Iterator[Metric]:
        yield counter(
            "tcpstate_events_lost",
            "Events lost, by reason. ring_buffer_full: the daemon did not keep up; the transition is "
            "still in tcpstate_transitions_total. program_not_run: the kernel skipped the program "
            "because the tracepoint fired while a BPF tracing program was already running on that "
            "CPU (an interrupt during it); that transition is counted nowhere",
            ["reason"], {(r,): n for r, n in snap.lost.items()})

    def program(self, snap: KernelSnapshot) -> Iterator[Metric]:
        k = snap.program
        if k is not None:
            yield gauge("tcpstate_kernel_map_entries", "Entries in the program's maps now",
                        ["map"], {("counters",): k.counters})
            yield gauge("tcpstate_kernel_map_capacity", "Entries the program's maps can hold",
                        ["map"], {("counters",): k.counters_capacity, ("sockets",): k.socks_capacity,
                                  ("lives",): k.lives_capacity})
            yield counter(
                "tcpstate_kernel_map_full",
                "Updates refused by a full map: counters (the transition was still counted, under "
                "port=\"other\"), sockets (a socket's role and owner were not remembered), lives (a "
                "young socket's transitions were sent one by one instead of in one record)",
                ["map"], {("counters",): k.counts_full, ("sockets",): k.socks_full, ("lives",): k.lives_full})
            yield counter(
                "tcpstate_kernel_lives_stale",
                "Young sockets' lives the program found still open where a new socket was born at the "
                "same address: it never ran for that socket's end (skipped, or not run on top of a thread "
                "the kernel runs no BPF program for); what it had seen was sent as it was, and the daemon "
                "ends the life as gone (tcpstate_socket_corrections_total)", [], {(): k.lives_stale})
            yield counter(
                "tcpstate_kernel_events_sent",
                "Transitions and resets the program put into the ring buffer (each transition of a life "
                "sent as one record counts); tcpstate_events_lost_total{reason=\"ring_buffer_full\"} more "
                "found it full. The daemon receives these and tcpstate_kernel_events_taken_total "
                "(tcpstate_events_received_total counts both)",
                [], {(): k.events})
            yield counter(
                "tcpstate_kernel_events_taken",
                "Transitions the daemon took out of the program's map of young lives (a socket open "
                "longer than 0.3 s) rather than through the ring buffer", [], {(): k.taken})
        yield counter("tcpstate_decode_errors", "Ring buffer records the daemon could not decode and skipped",
                      [], {(): snap.decode_errors})
