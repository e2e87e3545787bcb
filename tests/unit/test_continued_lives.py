"""A restart continues the lives the previous run left open, where the kernel's table
still has their sockets (Corrections.load_baseline with ``previous``)."""

from __future__ import annotations

from tracer.core.kernel_socket import KernelSocket
from tracer.core.record import AF_INET
from tracer.core.states import Role, TcpState as S
from tracer.core.tracker import Tracker

from lives import OFFSET_NS, life, raw_addr, read  # tests/unit

LO = raw_addr("127.0.0.1", AF_INET)
SEC = 10**9


def _kernel(lport: int, rport: int, state: S, netns: int = 4026531840, expires_s: float = 0) -> KernelSocket:
    return KernelSocket(netns, AF_INET, LO, lport, LO, rport, state.value, int(expires_s * SEC))


def test_a_socket_the_kernel_still_has_continues_its_life_and_the_others_get_new_ids():
    # The previous run saw the client open at Unix 1000 and reach ESTABLISHED at 1000.0003.
    established = read(life(7, start=1000, states=(("SYN_SENT", 0.0003), ("ESTABLISHED", 5)), open=True,
                            lport=40001, rport=8080))
    # A server end it saw in ESTABLISHED, which got the peer's FIN while no daemon ran.
    server = read(life(8, start=1000, states=(("SYN_RECV", 0.0001), ("ESTABLISHED", 5)), open=True,
                       lport=8080, rport=40001, role="passive", port=8080, netns=4026531840))
    elsewhere = read(life(9, start=1000, states=(("ESTABLISHED", 5),), open=True, lport=40002, rport=8080,
                          netns=99))  # the same addresses in another namespace: not the kernel's socket
    closing = read(life(10, start=1000, states=(("SYN_SENT", 0.0003), ("ESTABLISHED", 1), ("FIN_WAIT1", 0.001),
                                                ("FIN_WAIT2", 0.001), ("TIME_WAIT", 5)), open=True,
                        lport=40003, rport=8080))
    t = Tracker(60 * SEC, 100, keep_lifecycles=True)
    t.next_uid = 100
    now_ns = 2000 * SEC - OFFSET_NS  # Unix 2000
    kernel = [_kernel(40001, 8080, S.ESTABLISHED), _kernel(8080, 40001, S.CLOSE_WAIT),
              _kernel(40002, 8080, S.ESTABLISHED), _kernel(40003, 8080, S.TIME_WAIT, expires_s=30),
              _kernel(40004, 8080, S.ESTABLISHED)]
    assert t.load_baseline(kernel, now_ns, previous=[established, server, elsewhere, closing],
                           offset_ns=OFFSET_NS) == 5
    assert t.corrections.continued == {7, 8, 10}
    entries = {e.uid: e for e in t.table.sockets.values()}
    client = entries[7]
    assert client.state == S.ESTABLISHED and client.role == Role.ACTIVE and client.port == 8080
    assert client.history == [S.SYN_SENT, 1000 * SEC - OFFSET_NS, S.ESTABLISHED, 1000 * SEC + 300_000 - OFFSET_NS]
    assert client.since_ns == 1000 * SEC + 300_000 - OFFSET_NS  # in ESTABLISHED since the previous run saw it
    assert client.first_ns == 1000 * SEC - OFFSET_NS and client.opened
    srv = entries[8]
    assert srv.role == Role.PASSIVE and srv.state == S.CLOSE_WAIT
    assert srv.history[-2:] == [S.CLOSE_WAIT, now_ns]  # the state it changed to meanwhile begins now
    fresh = {uid for uid in entries if uid >= 100}
    assert len(fresh) == 2, entries  # 40002 (another namespace's life) and 40004: new lives
    tw = t.tw.by_conn[next(k.conn for k in kernel if k.sport == 40003)]
    assert tw.uid == 10 and tw.since_ns == 1_001_002_300_000 - OFFSET_NS  # when the previous run saw it enter
    assert tw[4].history[-2] == S.TIME_WAIT and len(tw[4].history) == 10  # [4]: the SocketEntry it was
