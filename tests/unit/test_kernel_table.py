"""The kernel socket table's pure parts: decoding sock_diag answers, the request, namespace lists.

Answers are built by hand from the UAPI layout (include/uapi/linux/inet_diag.h) and,
as a second mirror of the same layout, by pyroute2's own message classes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

import pytest

from tracer.sources import kernel_table as kt
from tracer.core import record
from tracer.core.states import TcpState

SEQ = 1
NETNS = 4026531840
V4_LOOP = bytes([127, 0, 0, 1]) + bytes(12)
V4_OTHER = bytes([10, 1, 2, 3]) + bytes(12)
V6_LOOP = socket.inet_pton(socket.AF_INET6, "::1")
V6_DOC = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
MAPPED_LOOP = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
MAPPED_OTHER = socket.inet_pton(socket.AF_INET6, "::ffff:10.1.2.3")


def diag_msg(family: int, state: int, src: bytes, sport: int, dst: bytes, dport: int, *,
             expires_ms: int = 0, inode: int = 0, cookie: int = 0, seq: int = SEQ,
             attrs: bytes = b"", timer: int | None = None) -> bytes:
    """One nlmsghdr + inet_diag_msg (+ attributes), laid out field by field as in the UAPI
    header. ``timer`` defaults to the kernel's: 3 for TIME_WAIT (a timewait socket), else 0."""
    if timer is None:
        timer = kt.TIMEWAIT_TIMER if state == TcpState.TIME_WAIT else 0
    body = (struct.pack("=BBBB", family, state, timer, 0)
            + struct.pack(">HH", sport, dport)
            + src + dst
            + struct.pack("=I", 0)  # idiag_if
            + struct.pack("=II", cookie & 0xFFFFFFFF, cookie >> 32)
            + struct.pack("=IIIII", expires_ms, 0, 0, 0, inode)
            + attrs)
    length = 16 + len(body)
    msg = struct.pack("=IHHII", length, kt.SOCK_DIAG_BY_FAMILY, 2, seq, 0) + body
    return msg + bytes(-len(msg) % 4)


def done(seq: int = SEQ, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, kt.NLMSG_DONE, 2, seq, 0, code)


def error(code: int, seq: int = SEQ) -> bytes:
    return struct.pack("=IHHIIi", 20, kt.NLMSG_ERROR, 0, seq, 0, code)


def decode(data: bytes, seq: int = SEQ) -> tuple[list[kt.KernelSocket], bool]:
    out: list[kt.KernelSocket] = []
    finished = kt.decode_answer(data, seq, NETNS, out)
    return out, finished


def test_layout_is_the_uapi_one():
    assert kt.NLMSGHDR.size == 16
    assert kt.INET_DIAG_MSG.size == 72


@pytest.mark.parametrize("family, src, dst, want_family, want_src, want_dst", [
    (socket.AF_INET, V4_LOOP, V4_OTHER, record.AF_INET, V4_LOOP, V4_OTHER),
    (socket.AF_INET6, V6_LOOP, V6_DOC, record.AF_INET6, V6_LOOP, V6_DOC),
    (socket.AF_INET6, MAPPED_LOOP, MAPPED_OTHER, record.AF_INET, V4_LOOP, V4_OTHER),
    # a dual-stack listener bound to a mapped address has no peer yet
    (socket.AF_INET6, MAPPED_LOOP, bytes(16), record.AF_INET, V4_LOOP, bytes(16)),
    # bytes the kernel would zero are ignored for IPv4 all the same
    (socket.AF_INET, bytes([127, 0, 0, 1]) + b"\xee" * 12, V4_OTHER, record.AF_INET, V4_LOOP, V4_OTHER),
])
def test_addresses_come_out_as_parse_addr_gives_them(family, src, dst, want_family, want_src, want_dst):
    (sock,), finished = decode(diag_msg(family, TcpState.ESTABLISHED, src, 40000, dst, 80))
    assert (sock.family, sock.saddr, sock.daddr) == (want_family, want_src, want_dst)
    assert not finished


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "::ffff:10.1.2.3", "2001:db8::7"])
def test_decoded_address_agrees_with_record_parse_addr(text):
    family, raw = record.parse_addr(text)
    wire_family = socket.AF_INET if ":" not in text else socket.AF_INET6
    wire = socket.inet_pton(wire_family, text)
    wire = wire + bytes(16 - len(wire))
    (sock,), _ = decode(diag_msg(wire_family, TcpState.LISTEN, wire, 22, bytes(16), 0))
    assert (sock.family, sock.saddr) == (family, raw)


def test_every_field_of_a_timewait_socket():
    cookie = 0x0000_1234_89AB_CDEF
    (sock,), _ = decode(diag_msg(socket.AF_INET, TcpState.TIME_WAIT, V4_LOOP, 51340, V4_OTHER, 20001,
                                 expires_ms=59_123, inode=0, cookie=cookie))
    assert sock == kt.KernelSocket(netns=NETNS, family=record.AF_INET, saddr=V4_LOOP, sport=51340,
                                   daddr=V4_OTHER, dport=20001, state=TcpState.TIME_WAIT,
                                   expires_ns=59_123_000_000, inode=0, cookie=cookie)
    assert sock.conn == (V4_LOOP, 51340, V4_OTHER, 20001)


@pytest.mark.parametrize("substate", [TcpState.TIME_WAIT, TcpState.FIN_WAIT2])
def test_a_timewait_socket_is_in_time_wait_whatever_its_substate(substate):
    """An orphan whose peer has not sent its FIN yet is a timewait socket in the FIN_WAIT2
    substate (inet_twsk_diag_fill: idiag_state = tw_substate, idiag_timer = 3)."""
    (sock,), _ = decode(diag_msg(socket.AF_INET, substate, V4_LOOP, 51340, V4_OTHER, 20001,
                                 expires_ms=58_000, timer=kt.TIMEWAIT_TIMER))
    assert (sock.state, sock.expires_ns) == (TcpState.TIME_WAIT, 58_000_000_000)


@pytest.mark.parametrize("timer", [0, 1, 2, 4])
def test_a_full_socket_in_fin_wait2_stays_in_fin_wait2(timer):
    (sock,), _ = decode(diag_msg(socket.AF_INET, TcpState.FIN_WAIT2, V4_LOOP, 51340, V4_OTHER, 20001,
                                 inode=77, timer=timer))
    assert sock.state == TcpState.FIN_WAIT2


def test_attributes_are_skipped_and_several_messages_read():
    # INET_DIAG_SHUTDOWN (u8, padded to 8) as the kernel adds for full sockets
    shutdown = struct.pack("=HHB", 5, 8, 0) + bytes(3)
    data = (diag_msg(socket.AF_INET, TcpState.LISTEN, V4_LOOP, 22, bytes(16), 0, inode=7, attrs=shutdown)
            + diag_msg(socket.AF_INET6, TcpState.ESTABLISHED, V6_LOOP, 22, V6_LOOP, 5555, inode=8,
                       attrs=struct.pack("=HHB", 5, 5, 0))  # unpadded attribute: message padded instead
            + diag_msg(socket.AF_INET, TcpState.TIME_WAIT, V4_LOOP, 5556, V4_LOOP, 22))
    socks, finished = decode(data)
    assert [(s.state, s.sport, s.dport, s.inode) for s in socks] == [
        (TcpState.LISTEN, 22, 0, 7), (TcpState.ESTABLISHED, 22, 5555, 8), (TcpState.TIME_WAIT, 5556, 22, 0)]
    assert not finished


def test_done_ends_the_dump_and_other_sequences_are_ignored():
    data = (diag_msg(socket.AF_INET, TcpState.LISTEN, V4_LOOP, 22, bytes(16), 0, seq=99)
            + diag_msg(socket.AF_INET, TcpState.LISTEN, V4_LOOP, 23, bytes(16), 0)
            + done(seq=99)
            + done())
    socks, finished = decode(data)
    assert [s.sport for s in socks] == [23]
    assert finished


@pytest.mark.parametrize("data, code", [
    (error(-errno.EPERM), errno.EPERM),
    (done(code=-errno.EINTR), errno.EINTR),
    (error(-errno.ENOENT), errno.ENOENT),
])
def test_an_error_answer_raises_with_its_errno(data, code):
    with pytest.raises(kt.SockDiagError) as caught:
        decode(data)
    assert caught.value.errno == code
    # not mistaken for a namespace that vanished
    assert not isinstance(caught.value, FileNotFoundError)


def test_an_ack_without_error_is_no_error():
    socks, finished = decode(error(0) + done())
    assert (socks, finished) == ([], True)


@pytest.mark.parametrize("data", [
    diag_msg(socket.AF_INET, TcpState.LISTEN, V4_LOOP, 22, bytes(16), 0)[:-8],  # cut short
    struct.pack("=IHH", 88, kt.SOCK_DIAG_BY_FAMILY, 2),  # a header cut short
    struct.pack("=IHHII", 40, kt.SOCK_DIAG_BY_FAMILY, 2, SEQ, 0) + bytes(24),  # no room for inet_diag_msg
    struct.pack("=IHHII", 8, kt.SOCK_DIAG_BY_FAMILY, 2, SEQ, 0),  # a length below the header's
])
def test_a_malformed_answer_is_an_error(data):
    with pytest.raises(kt.KernelTableError):
        decode(data)


def test_pyroute2s_mirror_of_the_layout_decodes_the_same():
    """pyroute2's inet_diag_msg is an independent transcription of the same UAPI struct."""
    from pyroute2.netlink.diag import inet_diag_msg

    msg = inet_diag_msg()
    msg["header"]["type"] = kt.SOCK_DIAG_BY_FAMILY
    msg["header"]["flags"] = 2
    msg["header"]["sequence_number"] = SEQ
    msg["header"]["pid"] = 0
    values = {
        "idiag_family": socket.AF_INET6, "idiag_state": TcpState.FIN_WAIT2, "idiag_timer": 2,
        "idiag_retrans": 1, "idiag_sport": 443, "idiag_dport": 61000,
        "idiag_src": struct.unpack(">4I", V6_DOC), "idiag_dst": struct.unpack(">4I", V6_LOOP),
        "idiag_if": 3, "idiag_cookie": 0xABCDEF01_23456789, "idiag_expires": 1234,
        "idiag_rqueue": 5, "idiag_wqueue": 6, "idiag_uid": 1000, "idiag_inode": 424242,
    }
    for key, value in values.items():
        msg[key] = value
    msg.encode()
    (sock,), _ = decode(bytes(msg.data))
    assert sock == kt.KernelSocket(NETNS, record.AF_INET6, V6_DOC, 443, V6_LOOP, 61000,
                                   TcpState.FIN_WAIT2, 1_234_000_000, 424242, 0xABCDEF01_23456789)


def test_the_request_asks_for_tcp_in_the_given_states():
    data = kt.request(socket.AF_INET6, kt.state_mask([TcpState.TIME_WAIT, TcpState.LISTEN]), 7)
    # nlmsghdr + inet_diag_req_v2: family, protocol, ext, pad, states, then the 48-byte sockid
    assert len(data) == 16 + 56
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert (length, mtype, seq) == (72, kt.SOCK_DIAG_BY_FAMILY, 7)
    assert flags == kt.NLM_F_REQUEST | kt.NLM_F_DUMP
    family, protocol, ext, _pad, states = struct.unpack_from("=BBBBI", data, 16)
    assert (family, protocol, ext) == (socket.AF_INET6, socket.IPPROTO_TCP, 0)
    assert states == (1 << 6) | (1 << 10) | (1 << 5)  # FIN_WAIT2 for the timewait sockets in that substate
    assert data[24:] == bytes(48)


@pytest.mark.parametrize("states, mask", [
    ([], 0),
    ([TcpState.TIME_WAIT], (1 << 6) | (1 << 5)),
    ([TcpState.FIN_WAIT2], 1 << 5),
    ([TcpState.ESTABLISHED, TcpState.LISTEN, TcpState.ESTABLISHED], (1 << 1) | (1 << 10)),
    ([1, 12], (1 << 1) | (1 << 12)),
])
def test_state_mask(states, mask):
    assert kt.state_mask(states) == mask


@pytest.mark.parametrize("bad", [0, 13, -1])
def test_state_mask_refuses_what_is_no_tcp_state(bad):
    with pytest.raises(ValueError):
        kt.state_mask([bad])


def test_namespaces_are_deduplicated_by_inode_first_path_kept(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("")
    b.write_text("")
    (tmp_path / "also-a").symlink_to(a)
    os.link(a, tmp_path / "hard-a")
    device = os.stat(tmp_path).st_dev
    paths = [str(tmp_path / n) for n in ("also-a", "a", "gone", "b", "hard-a")]
    assert kt.unique_namespaces(paths, device) == {
        os.stat(a).st_ino: str(tmp_path / "also-a"),
        os.stat(b).st_ino: str(tmp_path / "b"),
    }


def test_namespaces_on_another_device_are_left_out(tmp_path):
    (tmp_path / "plain").write_text("")  # as a /run/netns name not (or no longer) mounted
    found = kt.unique_namespaces([str(tmp_path / "plain"), "/proc/self/ns/net"], os.stat("/proc/self/ns/net").st_dev)
    assert found == {os.stat("/proc/self/ns/net").st_ino: "/proc/self/ns/net"}


def test_the_own_namespace_is_always_listed():
    own = os.stat("/proc/self/ns/net").st_ino
    assert kt.namespaces()[own] == "/proc/self/ns/net"


@pytest.mark.parametrize("states, netns", [([], None), ([TcpState.LISTEN], {})])
def test_nothing_asked_nothing_read(states, netns):
    assert kt.dump(states, netns) == ([], [])


# -- the orchestration, with entering a namespace and reading its table faked --------


class FakeKernel:
    """Stands in for setns and the netlink read; records which thread did what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: dict[int, OSError] | None = None,
                 stranded_after: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.threads: set[int] = set()
        self.fail = fail or {}
        self.stranded_after = stranded_after
        self.entered = 0
        self.inside: int | None = None
        home_ino = os.stat("/proc/thread-self/ns/net").st_ino

        def setns(fd: int) -> None:
            self.threads.add(threading.get_ident())
            ino = os.fstat(fd).st_ino
            if ino == home_ino:
                if self.stranded_after is not None and self.entered >= self.stranded_after:
                    raise OSError(errno.EINVAL, "Invalid argument")
                self.inside = None
                return
            if ino in self.fail:
                raise self.fail[ino]
            self.entered += 1
            self.inside = ino

        def open_diag(DiagSocket: type) -> object:
            return FakeDiag(self.inside)

        def read_table(diag: FakeDiag, mask: int, netns: int, out: list, attrs: bytes = b"") -> None:
            assert diag.netns == netns
            self.calls.append(("read", netns))
            out.append(kt.KernelSocket(netns, 2, V4_LOOP, 1, V4_LOOP, 2, TcpState.TIME_WAIT, 0, 0, 0))

        monkeypatch.setattr(kt, "_setns", setns)
        monkeypatch.setattr(kt, "_open_diag", open_diag)
        monkeypatch.setattr(kt, "_read_table", read_table)


class FakeDiag:
    def __init__(self, netns: int | None) -> None:
        self.netns = netns

    def close(self) -> None:
        pass


@pytest.fixture
def three_namespaces(tmp_path) -> dict[int, str]:
    """Plain files stand for namespaces: the fake setns only looks at their inodes."""
    found = {}
    for name in ("ns1", "ns2", "ns3"):
        path = tmp_path / name
        path.write_text("")
        found[os.stat(path).st_ino] = str(path)
    return found


def test_the_callers_thread_never_enters_a_namespace(monkeypatch, three_namespaces):
    fake = FakeKernel(monkeypatch)
    sockets, problems = kt.dump([TcpState.TIME_WAIT], three_namespaces)
    assert problems == []
    assert sorted(s.netns for s in sockets) == sorted(three_namespaces)
    assert fake.threads and threading.get_ident() not in fake.threads


@pytest.mark.parametrize("asked, kept", [
    ([TcpState.TIME_WAIT], [TcpState.TIME_WAIT]),
    ([TcpState.TIME_WAIT, TcpState.FIN_WAIT2], [TcpState.TIME_WAIT, TcpState.FIN_WAIT2]),
    ([TcpState.FIN_WAIT2], [TcpState.FIN_WAIT2]),
])
def test_timewait_asks_for_fin_wait2_and_keeps_only_what_was_asked(monkeypatch, three_namespaces, asked, kept):
    masks = []

    def read_table(diag, mask, netns, out, attrs=b""):
        masks.append(mask)
        for state in (TcpState.TIME_WAIT, TcpState.FIN_WAIT2):
            if mask & 1 << state:
                out.append(kt.KernelSocket(netns, 2, V4_LOOP, 1, V4_LOOP, 2, state, 0, 0, 0))

    FakeKernel(monkeypatch)
    monkeypatch.setattr(kt, "_read_table", read_table)
    sockets, problems = kt.dump(asked, three_namespaces)
    assert problems == [] and set(masks) == {kt.state_mask(asked)}
    assert sorted(s.state for s in sockets) == sorted(kept * 3)


def test_a_namespace_that_fails_is_one_problem_and_the_others_are_read(monkeypatch, three_namespaces):
    bad = sorted(three_namespaces)[1]
    FakeKernel(monkeypatch, fail={bad: PermissionError(errno.EPERM, "Operation not permitted")})
    sockets, problems = kt.dump([TcpState.TIME_WAIT], three_namespaces)
    assert sorted(s.netns for s in sockets) == sorted(set(three_namespaces) - {bad})
    assert len(problems) == 1
    assert str(bad) in problems[0] and three_namespaces[bad] in problems[0]
    assert "CAP_SYS_ADMIN" in problems[0]


def test_a_namespace_gone_before_it_is_entered_is_no_problem(monkeypatch, three_namespaces, tmp_path):
    FakeKernel(monkeypatch)
    first = sorted(three_namespaces)[0]
    os.unlink(three_namespaces[first])
    (tmp_path / "reused").write_text("")
    reused = dict(three_namespaces)
    # a path that now names something else (a pid reused by a process elsewhere)
    second = sorted(three_namespaces)[1]
    os.unlink(three_namespaces[second])
    os.rename(tmp_path / "reused", three_namespaces[second])
    sockets, problems = kt.dump([TcpState.TIME_WAIT], reused)
    assert problems == []
    assert [s.netns for s in sockets] == [sorted(three_namespaces)[2]]


def test_when_the_way_back_fails_the_rest_is_not_read(monkeypatch, three_namespaces):
    FakeKernel(monkeypatch, stranded_after=1)
    sockets, problems = kt.dump([TcpState.TIME_WAIT], three_namespaces)
    assert sockets == []
    assert len(problems) == 1 and "returning from network namespace" in problems[0]


def test_a_bug_in_the_worker_is_raised_in_the_caller(monkeypatch, three_namespaces):
    FakeKernel(monkeypatch)

    def broken(*_args):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(kt, "_read_table", broken)
    with pytest.raises(ZeroDivisionError):
        kt.dump([TcpState.TIME_WAIT], three_namespaces)


def test_timewait_connections_keeps_the_longer_time_left_and_fails_on_any_problem(monkeypatch):
    a = kt.KernelSocket(1, 2, V4_LOOP, 1000, V4_LOOP, 22, TcpState.TIME_WAIT, 5_000, 0, 1)
    b = kt.KernelSocket(2, 2, V4_LOOP, 1000, V4_LOOP, 22, TcpState.TIME_WAIT, 9_000, 0, 2)
    c = kt.KernelSocket(2, 2, V4_LOOP, 1001, V4_LOOP, 22, TcpState.TIME_WAIT, 7_000, 0, 3)
    answer: tuple[list, list] = ([b, a, c], [])
    asked = []

    def fake_dump(states, netns=None):
        asked.append((list(states), netns))
        return answer

    monkeypatch.setattr(kt, "dump", fake_dump)
    assert kt.timewait_connections() == {a.conn: 9_000, c.conn: 7_000}
    assert asked == [([TcpState.TIME_WAIT], None)]
    answer = ([a], ["reading the TCP sockets of network namespace 2 (/run/netns/x) failed: boom"])
    with pytest.raises(kt.KernelTableError, match="namespace 2"):
        kt.timewait_connections()


def test_a_port_filter_is_one_comparison_of_the_local_or_the_remote_port():
    # As ss builds it: the op, then an op holding the port; yes jumps to the end, no past it.
    assert kt.port_filter() == b""
    assert kt.port_filter(sport=8080) == struct.pack("=HHBBHBBH", 12, 1, 11, 8, 12, 0, 0, 8080)
    assert kt.port_filter(dport=443) == struct.pack("=HHBBHBBH", 12, 1, 12, 8, 12, 0, 0, 443)
    with pytest.raises(ValueError):
        kt.port_filter(sport=1, dport=2)


def test_a_filtered_request_carries_the_filter_after_the_request_and_its_length():
    plain = kt.request(socket.AF_INET, kt.state_mask([TcpState.LISTEN]), 3)
    filtered = kt.request(socket.AF_INET, kt.state_mask([TcpState.LISTEN]), 3, kt.port_filter(sport=22))
    assert filtered[4:len(plain)] == plain[4:] and filtered[len(plain):] == kt.port_filter(sport=22)
    assert struct.unpack_from("=I", filtered)[0] == len(filtered)
