"""The kernel's own socket table, read over sock_diag netlink, in every network namespace.

The tracepoint shows full sockets only; the timewait mini-sockets that follow an
active close live in this table. The tracepoint also sees every network namespace
at once, so the table is read in all of them, or the model's sockets in other
namespaces would look absent. Only the states asked for are dumped (the request's
state bitmask), so a host with many established connections pays for the states it
needs alone.

pyroute2's DiagSocket opens and binds the netlink socket and encodes the request;
the answer is decoded here with ``struct``. pyroute2's own decoding builds a
message object per socket, which a host with a full TIME_WAIT table pays for on
every read (README "Measured here" compares the two), and its MarshalDiag does not
recognise NLMSG_ERROR answers. The fixed part of
``struct inet_diag_msg`` is UAPI (include/uapi/linux/inet_diag.h) and is all that
is read; the attributes after it are skipped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Iterable

from tracer.core.states import TcpState
from tracer.core.kernel_socket import Conn, KernelSocket

AF_INET = socket.AF_INET.value
AF_INET6 = socket.AF_INET6.value
CLONE_NEWNET = 0x40000000

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# nlmsghdr followed by the fixed part of inet_diag_msg: family, state, timer,
# retrans; inet_diag_sockid (sport, dport big-endian, src[4] and dst[4] as raw
# bytes, if, cookie[2]); expires, rqueue, wqueue, uid, inode.
NLMSGHDR = struct.Struct("=IHHII")
INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
_HEADER_AND_MSG = struct.Struct(NLMSGHDR.format + INET_DIAG_MSG.format.removeprefix("="))
_ERRNO = struct.Struct("=i")

RECV_BYTES = 65536  # the kernel fills dump datagrams up to 32 KiB; a shorter buffer truncates them
ANSWER_TIMEOUT_S = 5.0  # silence this long during a dump is a failure, not a wait

# idiag_timer of a timewait socket (inet_twsk_diag_fill); full sockets report 0, 1, 2 or 4.
TIMEWAIT_TIMER = 3

_V4MAPPED = bytes(10) + b"\xff\xff"
_ZERO12 = bytes(12)
_SELF_NETNS = "/proc/self/ns/net"
_THREAD_NETNS = "/proc/thread-self/ns/net"
_RUN_NETNS = "/run/netns"


class KernelTableError(RuntimeError):
    pass


class SockDiagError(OSError):
    """An error the kernel answered a sock_diag request with."""


# -- decoding (pure) ------------------------------------------------------------


def decode_answer(data: bytes, seq: int, netns: int, out: list[KernelSocket]) -> bool:
    """Appends the sockets in one datagram of a sock_diag dump answer to ``out``.

    A timewait socket comes out in TIME_WAIT even in its FIN_WAIT2 substate (an
    orphan whose peer has not sent its FIN yet, which ``ss`` shows as FIN-WAIT-2): the
    full socket is gone, and the model holds it in TIME_WAIT from its close on.

    Returns True once the dump is complete (NLMSG_DONE). An error from the kernel
    raises SockDiagError with its errno; a malformed datagram raises KernelTableError.
    Messages of another sequence number are skipped.
    """
    unpack = _HEADER_AND_MSG.unpack_from
    full = _HEADER_AND_MSG.size
    append = out.append
    v4, v6 = AF_INET, AF_INET6
    mapped, zero12 = _V4MAPPED, _ZERO12
    timewait_timer, time_wait = TIMEWAIT_TIMER, TcpState.TIME_WAIT.value
    end = len(data)
    off = 0
    while off < end:
        if end - off < NLMSGHDR.size:
            raise KernelTableError(f"a sock_diag answer ends inside a message header ({end - off} bytes left)")
        length, mtype, _flags, mseq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > end:
            raise KernelTableError(f"a sock_diag message claims {length} bytes where {end - off} are left")
        if mseq == seq:
            if mtype == SOCK_DIAG_BY_FAMILY:
                if length < full:
                    raise KernelTableError(f"a sock_diag message of {length} bytes is shorter than inet_diag_msg")
                (_, _, _, _, _, fam, state, timer, _retrans, sport, dport, src, dst, _if, c0, c1,
                 expires, _rq, _wq, _uid, inode) = unpack(data, off)
                if timer == timewait_timer:
                    state = time_wait
                if fam == v4:
                    src = src[:4] + zero12
                    dst = dst[:4] + zero12
                elif src[:12] == mapped:  # as bpf/tcpstates.bpf.c decides: on the source address
                    fam = v4
                    src = src[12:] + zero12
                    dst = dst[12:] + zero12
                append(KernelSocket(netns, fam, src, int.from_bytes(sport, "big"), dst,
                                    int.from_bytes(dport, "big"), state, expires * 1_000_000,
                                    inode, c0 | c1 << 32))
            elif mtype in (NLMSG_DONE, NLMSG_ERROR):
                code = _ERRNO.unpack_from(data, off + NLMSGHDR.size)[0] if length >= 20 else 0
                if code < 0:
                    raise SockDiagError(-code, f"sock_diag answered {os.strerror(-code)}")
                if mtype == NLMSG_DONE:
                    return True
        off += (length + 3) & ~3
    return False


def state_mask(states: Iterable[int]) -> int:
    """The request's idiag_states bitmask; ValueError for a number that is no TCP state.

    The kernel matches a timewait socket on its substate, so TIME_WAIT asks for
    FIN_WAIT2 as well (``dump`` drops the full FIN_WAIT2 sockets this brings in)."""
    mask = 0
    for state in states:
        mask |= 1 << TcpState(state).value
    if mask & 1 << TcpState.TIME_WAIT.value:
        mask |= 1 << TcpState.FIN_WAIT2.value
    return mask


# A port filter (INET_DIAG_REQ_BYTECODE, include/uapi/linux/inet_diag.h): one
# comparison op whose second op holds the port; "yes" jumps to the end (match),
# "no" past it (no match), as ss builds it.
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
INET_DIAG_BC_D_EQ = 12
_BC_OP = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")


def port_filter(sport: int | None = None, dport: int | None = None) -> bytes:
    """The request attribute that keeps the sockets of one local (``sport``) or remote
    (``dport``) port, filtered in the kernel; b"" for no filter."""
    if sport is None and dport is None:
        return b""
    if sport is not None and dport is not None:
        raise ValueError("a filter on the local or the remote port, not both")
    code, port = (INET_DIAG_BC_S_EQ, sport) if sport is not None else (INET_DIAG_BC_D_EQ, dport)
    ops = _BC_OP.pack(code, 8, 12) + _BC_OP.pack(0, 0, port)
    return _NLATTR.pack(_NLATTR.size + len(ops), INET_DIAG_REQ_BYTECODE) + ops


def request(family: int, mask: int, seq: int, attrs: bytes = b"") -> bytes:
    """A dump request (inet_diag_req_v2) for the TCP sockets of ``family`` in the states of
    ``mask``, with ``attrs`` (a ``port_filter``) after it."""
    from pyroute2.netlink.diag import inet_diag_req

    req = inet_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = seq
    req["header"]["pid"] = 0
    req["sdiag_family"] = family
    req["sdiag_protocol"] = socket.IPPROTO_TCP
    req["idiag_states"] = mask
    req.encode()
    data = bytes(req.data) + attrs
    return struct.pack("=I", len(data)) + data[4:]


# -- namespaces -----------------------------------------------------------------


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def unique_namespaces(paths: Iterable[str], device: int | None) -> dict[int, str]:
    """Inode -> the first path that names it, for the paths on ``device`` (nsfs).

    A path that cannot be read is skipped: processes end while /proc is scanned.
    The device check drops a /run/netns entry left as a plain file (not mounted yet,
    or unmounted by ``ip netns delete``), whose inode is no namespace.
    """
    found: dict[int, str] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if device is not None and st.st_dev != device:
            continue
        found.setdefault(st.st_ino, path)
    return found


def _candidate_paths() -> Iterable[str]:
    yield _SELF_NETNS
    try:
        names = sorted(os.listdir(_RUN_NETNS))
    except OSError:
        names = []
    # Named namespaces first: their path outlives any one process in them.
    for name in names:
        yield os.path.join(_RUN_NETNS, name)
    for pid in _pids():
        yield f"/proc/{pid}/ns/net"


def namespaces() -> dict[int, str]:
    """Every network namespace on the host -> a path that opens it.

    Sources: the daemon's own, ``ip netns`` names (/run/netns), and every process's
    /proc/PID/ns/net. A namespace that no process is in and that is held only by an
    open descriptor or by a bind mount elsewhere is not found.
    """
    return unique_namespaces(_candidate_paths(), os.stat(_SELF_NETNS).st_dev)


# -- entering a namespace -------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    """Moves the calling thread (not the process) into the network namespace of ``fd``."""
    native = getattr(os, "setns", None)  # Python 3.12+
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class _Stranded(Exception):
    """The worker thread could not return to its own namespace."""


class _Gone(Exception):
    """The namespace ended between listing and entering."""


def _open_diag(DiagSocket: type) -> object:
    diag = DiagSocket()
    try:
        diag.bind()
    except BaseException:
        diag.close()
        raise
    return diag


def _read_table(diag: object, mask: int, netns: int, out: list[KernelSocket], attrs: bytes = b"") -> None:
    poller = select.poll()
    poller.register(diag.fileno(), select.POLLIN)
    for seq, family in enumerate((AF_INET, AF_INET6), start=1):
        diag.send(request(family, mask, seq, attrs))
        done = False
        while not done:
            if not poller.poll(ANSWER_TIMEOUT_S * 1000):
                raise KernelTableError(f"no answer from sock_diag within {ANSWER_TIMEOUT_S:g} s")
            try:
                data = diag.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            done = decode_answer(data, seq, netns, out)


def _read_namespace(DiagSocket: type, ino: int, path: str, home: tuple[int, int],
                    mask: int, out: list[KernelSocket], attrs: bytes) -> None:
    """Reads one namespace's table into ``out``; _Gone if it ended before it was entered."""
    home_fd, home_ino = home
    if ino == home_ino:
        diag = _open_diag(DiagSocket)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone from None
        try:
            if os.fstat(fd).st_ino != ino:
                # The pid was reused, or the name now holds another namespace: the one listed is gone.
                raise _Gone
            _setns(fd)
            diag = None
            try:
                # A netlink socket belongs to the namespace it was created in, for good.
                diag = _open_diag(DiagSocket)
            finally:
                try:
                    _setns(home_fd)
                except OSError as exc:
                    if diag is not None:
                        diag.close()
                    raise _Stranded(str(exc)) from None
        finally:
            os.close(fd)
    try:
        _read_table(diag, mask, ino, out, attrs)
    finally:
        diag.close()


def _read_all(DiagSocket: type, targets: dict[int, str], mask: int, attrs: bytes,
              out: list[KernelSocket], problems: list[str]) -> None:
    try:
        home_fd = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelTableError(f"opening the daemon's own network namespace ({_THREAD_NETNS}) failed: {exc}; "
                               "is /proc mounted?") from None
    try:
        home = (home_fd, os.fstat(home_fd).st_ino)
        for ino, path in targets.items():
            found: list[KernelSocket] = []
            try:
                _read_namespace(DiagSocket, ino, path, home, mask, found, attrs)
            except _Gone:
                continue
            except _Stranded as exc:
                problems.append(f"returning from network namespace {ino} ({path}) failed: {exc}; "
                                "the namespaces after it were not read")
                return
            except (OSError, KernelTableError) as exc:
                hint = ""
                if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES):
                    hint = "; entering a namespace needs root (CAP_SYS_ADMIN)"
                problems.append(f"reading the TCP sockets of network namespace {ino} ({path}) failed: {exc}{hint}")
                continue
            out.extend(found)
    finally:
        os.close(home_fd)


def dump(states: Iterable[int], netns: dict[int, str] | None = None, *, sport: int | None = None,
         dport: int | None = None) -> tuple[list[KernelSocket], list[str]]:
    """All TCP sockets (IPv4 and IPv6) in ``states``, in every namespace of ``netns``
    (inode -> path; None: ``namespaces()``), only those of local port ``sport`` or of
    remote port ``dport`` when given (filtered in the kernel: a host with a full
    TIME_WAIT table pays only for that port's). Returns (sockets, problems): one line
    per namespace that could not be read; a namespace gone before it was entered is
    no problem.

    Entering a namespace (setns) moves only the calling thread, so the work runs in
    a short-lived thread of its own: the caller's thread never changes namespace,
    whatever fails, and should the way back fail, the stranded thread simply ends.
    The worker leaves each namespace again as soon as its netlink socket exists
    (a socket stays in the namespace it was made in); the dump itself runs at home.
    Safe to call from any thread, several at once.
    """
    try:
        from pyroute2.netlink.diag import DiagSocket
    except ImportError:
        raise KernelTableError("the pyroute2 module is missing: run `make setup`") from None
    wanted = {TcpState(state).value for state in states}
    mask = state_mask(wanted)
    attrs = port_filter(sport, dport)
    try:
        targets = namespaces() if netns is None else dict(netns)
    except OSError as exc:
        raise KernelTableError(f"listing the network namespaces (/proc/*/ns/net) failed: {exc}") from None
    sockets: list[KernelSocket] = []
    problems: list[str] = []
    if not mask or not targets:
        return sockets, problems
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _read_all(DiagSocket, targets, mask, attrs, sockets, problems)
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=work, name="kernel-table-dump", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    if len(wanted) < bin(mask).count("1"):
        sockets = [s for s in sockets if s.state in wanted]
    return sockets, problems


def timewait_connections() -> dict[Conn, int]:
    """Every TIME_WAIT connection in every network namespace -> nanoseconds its timer has left.

    Any namespace that cannot be read fails the whole call: without its sockets the
    model's TIME_WAITs there would look ended. Connections are keyed without their
    namespace (the tracepoint's records carry none); when the same connection is in
    TIME_WAIT in two namespaces, the longer time left is kept.
    """
    try:
        sockets, problems = dump((TcpState.TIME_WAIT,))
    except OSError as exc:
        raise KernelTableError(f"reading the kernel's socket table (sock_diag) failed: {exc}") from None
    if problems:
        raise KernelTableError("; ".join(problems))
    found: dict[Conn, int] = {}
    for sock in sockets:
        conn = sock.conn
        if found.get(conn, -1) < sock.expires_ns:
            found[conn] = sock.expires_ns
    return found


def pin_namespace(pid: int) -> tuple[int, int] | None:
    """(namespace inode, an open descriptor of it) of a process's network namespace, or
    None once the process has gone; dump() reads it through /proc/self/fd/N for as long
    as the descriptor stays open."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return os.fstat(fd).st_ino, fd


def owners() -> dict[int, tuple[int, str]]:
    """Socket inode -> (pid, comm) of the lowest pid holding it, from /proc/*/fd.

    For sockets that existed before the daemon started, whose owner no event named.
    Processes that end or cannot be read during the scan are skipped.
    """
    found: dict[int, tuple[int, str]] = {}
    for pid in _pids():
        try:
            dir_fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            inodes = []
            for name in os.listdir(dir_fd):
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
        except OSError:
            continue
        finally:
            os.close(dir_fd)
        if not inodes:
            continue
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                comm = f.read().rstrip("\n")
        except OSError:
            continue
        for ino in inodes:
            found.setdefault(ino, (pid, comm))
    return found
