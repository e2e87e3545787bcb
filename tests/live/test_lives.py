"""Young sockets assembled in the kernel (bpf/tcpstates.bpf.c): a short life arrives
as one record; a life that grows old is taken out of the map and its socket goes
on one transition at a time; every transition arrives exactly once either way."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
from tests.live import traffic
from tracer.core import record, states
from tracer.core.states import EventKind, TcpState

CLIENT = [("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
          ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")]
SERVER = [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
          ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")]


@pytest.fixture(scope="module")
def source(live_host):
    from tracer.host import headers
    from tracer.sources.bcc import BccSource

    headers.prepare()
    src = BccSource(ringbuf_pages=1024)
    yield src
    src.close()


def collect(source, port: int, seconds: float) -> list[tuple]:
    """The records of this service port read in ``seconds``, the sweeps' included."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        recs = source.read_records(0.05) + source.sweep()
        out += [r for r in recs if r[record.Field.SERVICE_PORT] == port]
    return out


def path(recs: list[tuple], sk: int) -> list[tuple[str, str]]:
    """The socket's state transitions, in order (its resets and retransmissions left out)."""
    return [(TcpState(ev[10]).name, TcpState(ev[11]).name)
            for r in recs if r[record.Field.SK] == sk for ev in record.events_of(r)
            if ev[record.Field.KIND] == 0]


def transitions(recs: list[tuple]) -> int:
    """State transitions in these records (a reset, which the kernel counts apart, is
    not one: a late ACK answered by the listener's reset happens now and then)."""
    return sum(1 for r in recs for ev in record.events_of(r) if ev[record.Field.KIND] == 0)


def kernel_count(source, port: int, kind: int) -> int:
    """Events of this kind the program counted on this service port (a SYN-ACK's
    retransmission, counted as SYN_RECV, belongs to no socket's records)."""
    return sum(n for (p, k, old, _new), n in source.transition_counts().items()
               if p == port and k == kind and not (k == EventKind.RETRANSMIT and old == TcpState.SYN_RECV))


def kernel_transitions(source, port: int) -> int:
    return kernel_count(source, port, 0)


def test_short_lives_arrive_whole_one_record_a_socket(source):
    port = traffic.quiet_port()
    before = kernel_transitions(source, port)
    before_rtx = kernel_count(source, port, EventKind.RETRANSMIT.value)
    traffic.client_closed(port, 50)
    recs = collect(source, port, 0.6)
    lives = [r for r in recs if r[record.MORE_AT] and r[record.Field.ROLE] != 3]
    # 50 clients and 50 accepted sockets, each one record of its five transitions (the
    # listener's LISTEN and CLOSE are a record too). A loaded host now and then retransmits
    # a segment even on loopback: it rides in its socket's life, counted by the program.
    assert len(lives) == 100
    assert Counter(tuple(path([r], r[record.Field.SK])) for r in lives) == {tuple(CLIENT): 50, tuple(SERVER): 50}
    extra = Counter(ev[record.Field.KIND] for r in recs for ev in record.events_of(r)
                    if ev[record.Field.KIND] != 0)
    assert set(extra) <= {EventKind.RETRANSMIT.value}
    assert extra[EventKind.RETRANSMIT.value] == kernel_count(source, port, EventKind.RETRANSMIT.value) - before_rtx
    assert transitions(recs) == kernel_transitions(source, port) - before  # the listener's two included


def test_an_old_life_is_taken_and_its_socket_goes_on_one_transition_at_a_time(source):
    port = traffic.quiet_port()
    before = kernel_transitions(source, port)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4)
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        sk_port = client.getsockname()[1]
        held = collect(source, port, source.YOUNG_NS / 1e9 + 0.4)
        taken = [r for r in held if r[record.MORE_AT] or r[record.Field.SPORT] == sk_port]
        client.close()
        server.close()
    closing = collect(source, port, 0.4)
    recs = held + closing
    client_sk = next(r[1] for r in recs if r[record.Field.SPORT] == sk_port)
    # The life so far came out of the map; the close, one record a transition.
    assert path(taken, client_sk) == CLIENT[:2]
    assert path(closing, client_sk) == CLIENT[2:]
    assert all(not r[record.MORE_AT] for r in closing if r[1] == client_sk)
    assert source.lives_taken >= 3  # client, accepted socket, listener
    assert transitions(recs) == kernel_transitions(source, port) - before


def test_a_taken_socket_keeps_its_role_and_owner_after_its_listener_is_gone(source):
    """A young socket's role, service port and owner live in its life alone: once the
    daemon takes the life, the program must still know them, not guess them from the
    listening ports (with the listener closed, an accepted socket would pass for a
    client of its peer's ephemeral port)."""
    import os

    port = traffic.quiet_port()
    listener = traffic.listener("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    held = collect(source, port, source.YOUNG_NS / 1e9 + 0.4)
    listener.close()
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    server.close()
    client.close()
    closing = collect(source, port, 0.4)
    assert source.lives_taken >= 3 and any(r[record.MORE_AT] == 1 for r in held)
    events = [ev for r in closing for ev in record.events_of(r)]
    assert {ev[record.Field.SERVICE_PORT] for ev in events} == {port}
    seen = {(TcpState(ev[10]).name, TcpState(ev[11]).name):
            (ev[record.Field.ROLE], ev[record.Field.PID], ev[record.Field.FLAGS]) for ev in events}
    me = os.getpid()
    # role, owner, flags (no inferred role; the accepted socket's owner seen in its close; the
    # client's FIN came from shutdown(SHUT_WR), which its records say from then on)
    assert seen[("LISTEN", "CLOSE")] == (3, me, 0)
    assert seen[("ESTABLISHED", "FIN_WAIT1")] == seen[("FIN_WAIT2", "CLOSE")] == (1, me, states.F_SHUT_WR)
    assert seen[("ESTABLISHED", "CLOSE_WAIT")] == (2, me, 2)  # still the listener's, inherited
    assert seen[("CLOSE_WAIT", "LAST_ACK")] == seen[("LAST_ACK", "CLOSE")] == (2, me, 0)
