"""Real stuck TCP sockets, made in network namespaces the tests create and delete.

Loopback cannot make a peer vanish; two namespaces joined by a veth pair can: a
DROP rule in one of them loses the final ACK, a program that never calls close()
leaks CLOSE_WAIT, and shutdown(SHUT_WR) without close() leaves a FIN_WAIT2 that no
fin_timeout reaps. Each scenario returns once ``ss`` in the namespaces (the
kernel's own view) shows the state, and everything it made (programs, rules,
veth, namespaces) goes away when the hosts' context managers exit, also when a
test fails.

Run as a script, this module is the program that holds the sockets inside a
namespace: it prints one JSON line per step, so the scenario learns the 4-tuple,
and lives at most ``--hold`` seconds (or until its stdin closes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tracer.core.states import TcpState

T = TypeVar("T")

HOLD_SECONDS = 300  # longest a socket-holding program lives
IO_TIMEOUT = 10.0  # connect, accept and recv inside the programs
STEP_TIMEOUT = 10.0  # how long a scenario waits for one step
COMMAND_TIMEOUT = 10.0  # ip, ss, iptables
# TCP_TIMEWAIT_LEN (include/net/tcp.h): what a timewait timer is (re-)armed to.
TIMEWAIT_SECONDS = 60
VETH = "veth0"  # same name at both ends: each end lives in a namespace of its own


class NetnsError(RuntimeError):
    pass


def unique_name(purpose: str) -> str:
    """``tst-<purpose>-<random hex>``: parallel runs never collide, and a leftover is
    recognisably a test's."""
    return f"tst-{purpose}-{secrets.token_hex(4)}"


def run(cmd: list[str], timeout: float = COMMAND_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed with {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def namespaces() -> set[str]:
    """Names `ip netns list` shows."""
    return {line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()}


def wait_until(check: Callable[[], T | None], what: str, timeout: float = STEP_TIMEOUT,
               interval: float = 0.05) -> T:
    """Polls ``check`` until it returns something truthy; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------- ss


@dataclass(frozen=True)
class Timer:
    name: str  # on, keepalive, timewait, persist
    seconds: float
    retrans: int


@dataclass(frozen=True)
class SsRow:
    """One socket of `ss -tanoip`."""

    state: TcpState
    recv_q: int
    send_q: int
    local_ip: str
    local_port: int | None
    peer_ip: str
    peer_port: int | None
    timer: Timer | None
    pids: tuple[int, ...]  # processes holding it: empty once orphaned
    info: str  # the -i line (rto, retrans:x/y, ...)

    def info_field(self, name: str) -> str | None:
        match = re.search(rf"(?:^|\s){re.escape(name)}:(\S+)", self.info)
        return match.group(1) if match else None


_TIMER = re.compile(r"timer:\((\w+),([^,]*),(\d+)\)")
_SPAN = re.compile(r"^(?:(\d+)min)?(?:(\d+)(?:sec|\.))?(?:(\d+)ms)?$")


def ss_seconds(text: str) -> float:
    """Reads iproute2's print_ms_timer: ``1min5sec``, ``59sec``, ``3.192ms`` (3.192 s), ``060ms``."""
    match = _SPAN.match(text)
    if not match:
        raise ValueError(f"unreadable ss timer {text!r}")
    minutes, secs, msecs = (int(g) if g else 0 for g in match.groups())
    return minutes * 60 + secs + msecs / 1000


def _endpoint(text: str) -> tuple[str, int | None]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def _state(text: str) -> TcpState:
    return TcpState.ESTABLISHED if text == "ESTAB" else TcpState.parse(text)


def parse_ss(text: str) -> list[SsRow]:
    """Rows of `ss -Htanoip` output: a socket line, then an indented -i line."""
    rows: list[dict] = []
    for line in text.splitlines():
        if line[:1].isspace():
            if rows:
                rows[-1]["info"] = (rows[-1]["info"] + " " + line.strip()).strip()
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        rest = fields[5] if len(fields) > 5 else ""
        local, peer = _endpoint(fields[3]), _endpoint(fields[4])
        timer = _TIMER.search(rest)
        rows.append(dict(
            state=_state(fields[0]), recv_q=int(fields[1]), send_q=int(fields[2]),
            local_ip=local[0], local_port=local[1], peer_ip=peer[0], peer_port=peer[1],
            timer=Timer(timer.group(1), ss_seconds(timer.group(2)), int(timer.group(3))) if timer else None,
            pids=tuple(int(p) for p in re.findall(r"pid=(\d+)", rest)), info=""))
    return [SsRow(**row) for row in rows]


# ------------------------------------------------------------------------- hosts


class TestHost:
    """A network namespace of the test's own, with lo up; a context manager.

    On exit it aborts every TCP socket in the namespace (SOCK_DESTROY, `ss -K`):
    an orphaned LAST_ACK socket would otherwise keep the deleted namespace alive
    for its ~100 s of retransmissions. Then it kills the programs it started, runs
    the cleanups added with ``add_cleanup`` and deletes the namespace.
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, purpose: str = "host") -> None:
        self.name = unique_name(purpose)
        self.netns_inode = 0
        self.processes: list[subprocess.Popen] = []
        self._cleanups: list[tuple[str, Callable[[], object]]] = []
        self._created = False

    def __repr__(self) -> str:
        return f"TestHost({self.name!r})"

    def __enter__(self) -> TestHost:
        run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            self.netns_inode = os.stat(f"/run/netns/{self.name}").st_ino
            run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, cmd: list[str], check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.name, *cmd], timeout=timeout, check=check)

    def popen(self, cmd: list[str]) -> subprocess.Popen:
        """Starts ``cmd`` in the namespace, stdin and stdout (stderr merged) piped.
        `ip netns exec` execs the command, so the Popen's pid is the program's."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.processes.append(proc)
        return proc

    def ss(self, state: TcpState | str | None = None) -> list[SsRow]:
        """TCP sockets in this namespace, as the kernel reports them. The state is
        filtered here: `ss ... state X` would drop the state column."""
        rows = parse_ss(self.exec(["ss", "-Htanoip"]).stdout)
        if state is None:
            return rows
        wanted = state if isinstance(state, TcpState) else _state(state.upper())
        return [row for row in rows if row.state == wanted]

    def add_cleanup(self, what: str, fn: Callable[[], object]) -> None:
        """Runs ``fn`` at close, before the namespace is deleted (last added, first run)."""
        self._cleanups.append((what, fn))

    def quiesce(self) -> None:
        """Aborts every TCP socket in the namespace and kills the programs started here."""
        if not self._created:
            return
        self.exec(["ss", "-K", "-tan"])
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for pipe in (proc.stdin, proc.stdout):
                if pipe:
                    with contextlib.suppress(OSError):
                        pipe.close()
        # A program's exit closes its sockets, which may start new closing handshakes.
        self.exec(["ss", "-K", "-tan"])

    def close(self) -> None:
        """Cleans up everything; every step runs even when an earlier one failed."""
        if not self._created:
            return
        problems: list[str] = []
        steps = [("abort sockets, kill programs", self.quiesce)]
        steps += reversed(self._cleanups)
        for what, fn in steps:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported below, after the namespace is gone
                problems.append(f"{what}: {exc}")
        self._cleanups.clear()
        alive = [p.pid for p in self.processes if p.poll() is None]
        if alive:
            problems.append(f"programs still running: {alive}")
        leftover = self.exec(["ss", "-Htan"], check=False).stdout.strip()
        if leftover:
            problems.append(f"sockets left in the namespace:\n{leftover}")
        try:
            run(["ip", "netns", "delete", self.name])
        except (NetnsError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
        self._created = False
        if self.name in namespaces() or os.path.exists(f"/run/netns/{self.name}"):
            problems.append("the namespace is still listed after `ip netns delete`")
        if problems:
            raise NetnsError(f"cleaning up namespace {self.name}: " + "; ".join(problems))


@contextlib.contextmanager
def host_pair(purpose: str = "pair") -> Iterator[tuple[TestHost, TestHost, str, str]]:
    """Two namespaces joined by a veth pair, lo up in both:
    yields (client, server, client_ip, server_ip). The veth is created inside the
    client namespace with its peer moved straight into the server's, so no
    interface ever appears in the host's namespace."""
    subnet = secrets.randbelow(256)
    client_ip, server_ip = f"10.253.{subnet}.1", f"10.253.{subnet}.2"
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(TestHost(f"{purpose}-cli"))
        server = stack.enter_context(TestHost(f"{purpose}-srv"))
        run(["ip", "-n", client.name, "link", "add", VETH, "type", "veth", "peer", "name", VETH,
             "netns", server.name])
        # Exit order: programs and sockets in both, then the veth, then the namespaces.
        stack.callback(_delete_veth, client)
        stack.callback(server.quiesce)
        stack.callback(client.quiesce)
        for host, ip in ((client, client_ip), (server, server_ip)):
            run(["ip", "-n", host.name, "addr", "add", f"{ip}/30", "dev", VETH])
            run(["ip", "-n", host.name, "link", "set", VETH, "up"])
        yield client, server, client_ip, server_ip


def _delete_veth(host: TestHost) -> None:
    if run(["ip", "-n", host.name, "link", "show", VETH], check=False).returncode == 0:
        run(["ip", "-n", host.name, "link", "del", VETH])


# --------------------------------------------------------------------- programs


class Program:
    """A socket-holding program (this module run as a script) inside a namespace."""

    def __init__(self, host: TestHost, *args: str) -> None:
        self.host = host
        self.proc = host.popen([sys.executable, "-I", os.path.abspath(__file__), *args, "--hold", str(HOLD_SECONDS)])
        self.pid = self.proc.pid
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"netns-program-{self.pid}", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):  # the pipe was closed at cleanup
            pass
        self._lines.put(None)

    def expect(self, event: str, timeout: float = STEP_TIMEOUT) -> dict:
        """The next message named ``event``; earlier messages and stray output are kept in ``output``."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0))
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)
                raise AssertionError(f"program {self.pid} in {self.host.name} exited ({self.proc.poll()}) "
                                     f"before {event!r}:\n{''.join(self.output)}")
            self.output.append(line)
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == event:
                    return message
        raise AssertionError(f"program {self.pid} in {self.host.name} said no {event!r} within {timeout} s:\n"
                             f"{''.join(self.output)}")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


@dataclass
class Scenario:
    """What a scenario made: the connection(s) and who holds them."""

    kind: str
    client: TestHost
    server: TestHost
    client_ip: str
    server_ip: str
    client_port: int  # local port of the (first) client socket
    server_port: int
    client_pid: int  # the programs; the sockets may be orphaned by now
    server_pid: int
    client_ports: list[int] = field(default_factory=list)  # all of them, when there are several
    rule: list[str] | None = None  # iptables rule spec in the client namespace
    server_closed_at: float | None = None  # time.monotonic() when the server was told to close

    def client_sockets(self, state: TcpState | str | None = None) -> list[SsRow]:
        return [r for r in self.client.ss(state)
                if r.peer_port == self.server_port and r.local_port in self.client_ports]

    def server_sockets(self, state: TcpState | str | None = None) -> list[SsRow]:
        return [r for r in self.server.ss(state)
                if r.local_port == self.server_port and r.peer_port in self.client_ports]


def _start(kind: str, client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int,
           n: int, end: str, on_eof: str) -> tuple[Scenario, Program]:
    srv = Program(server, "serve", server_ip, str(port), "--count", str(n), "--on-eof", on_eof)
    srv.expect("listening")
    cli = Program(client, "connect", server_ip, str(port), "--count", str(n), "--end", end)
    ports = [cli.expect("connected")["local"] for _ in range(n)]
    for _ in range(n):
        srv.expect("eof")
    scenario = Scenario(kind, client, server, client_ip, server_ip, ports[0], port,
                        cli.pid, srv.pid, client_ports=ports)
    return scenario, srv


def final_ack_dropped(client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int) -> Scenario:
    """The client closes first (orphaned); the server reads EOF and closes; a DROP
    rule in the client namespace loses the client's final ACK. The server sits in
    LAST_ACK retransmitting its FIN, and each retransmission re-arms the client's
    TIME_WAIT timer to 60 s. Returns once both are visible."""
    scenario, srv = _start("final_ack_dropped", client, server, client_ip, server_ip, port, 1, "close", "wait")
    wait_until(lambda: scenario.client_sockets(TcpState.FIN_WAIT2), "the client's FIN to be acknowledged (FIN-WAIT-2)")
    # Only pure ACKs of this connection: everything else the client could send is gone by now.
    rule = ["OUTPUT", "-p", "tcp", "-s", client_ip, "--sport", str(scenario.client_port), "-d", server_ip,
            "--dport", str(port), "--tcp-flags", "ACK,FIN,SYN,RST", "ACK", "-j", "DROP"]
    client.exec(["iptables", "-w", "5", "-A", *rule])
    client.add_cleanup("delete the iptables rule", lambda: client.exec(["iptables", "-w", "5", "-D", *rule]))
    scenario.rule = rule
    scenario.server_closed_at = time.monotonic()
    srv.send("close")
    srv.expect("closed")
    wait_until(lambda: scenario.server_sockets(TcpState.LAST_ACK) and scenario.client_sockets(TcpState.TIME_WAIT),
               "LAST-ACK in the server namespace and TIME-WAIT in the client's")
    return scenario


def close_wait_leak(client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int) -> Scenario:
    """The client closes; the server reads EOF and never calls close(): CLOSE_WAIT
    for as long as the server program lives (until cleanup)."""
    scenario, _ = _start("close_wait_leak", client, server, client_ip, server_ip, port, 1, "close", "hold")
    wait_until(lambda: [r for r in scenario.server_sockets(TcpState.CLOSE_WAIT) if scenario.server_pid in r.pids],
               "CLOSE-WAIT held by the server program")
    return scenario


def half_close(client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int) -> Scenario:
    """The client calls shutdown(SHUT_WR) and keeps the socket; the server never
    closes its side. The client's FIN_WAIT2 is not orphaned, so no fin_timeout
    ends it: both stay until cleanup."""
    scenario, _ = _start("half_close", client, server, client_ip, server_ip, port, 1, "shutdown", "hold")
    wait_until(lambda: [r for r in scenario.client_sockets(TcpState.FIN_WAIT2) if scenario.client_pid in r.pids]
               and [r for r in scenario.server_sockets(TcpState.CLOSE_WAIT) if scenario.server_pid in r.pids],
               "FIN-WAIT-2 held by the client program and CLOSE-WAIT held by the server program")
    return scenario


def orphaned_fin_wait2(client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int) -> Scenario:
    """The client calls shutdown(SHUT_WR), then close(); the server never closes. With
    net.ipv4.tcp_fin_timeout above 60 s in the client's namespace the kernel keeps the
    orphan as a full FIN_WAIT2 socket (at 60 s or less it would hand it to a timewait
    mini-socket at once): it stays until cleanup, owned by nobody."""
    client.exec(["sysctl", "-q", "-w", "net.ipv4.tcp_fin_timeout=120"])
    scenario, _ = _start("orphaned_fin_wait2", client, server, client_ip, server_ip, port, 1, "shutdown_close", "hold")
    wait_until(lambda: [r for r in scenario.client_sockets(TcpState.FIN_WAIT2) if not r.pids]
               and [r for r in scenario.server_sockets(TcpState.CLOSE_WAIT) if scenario.server_pid in r.pids],
               "an orphaned FIN-WAIT-2 in the client namespace and CLOSE-WAIT held by the server program")
    return scenario


def ordinary_timewait(client: TestHost, server: TestHost, client_ip: str, server_ip: str, port: int,
                      n: int = 3) -> Scenario:
    """``n`` plain connections the client closes first: n TIME_WAIT sockets in the
    client namespace, none left on the server's side."""
    scenario, _ = _start("ordinary_timewait", client, server, client_ip, server_ip, port, n, "close", "close")
    wait_until(lambda: len(scenario.client_sockets(TcpState.TIME_WAIT)) == n and not scenario.server_sockets(),
               f"{n} TIME-WAIT sockets in the client namespace and none on the server")
    return scenario


# ------------------------------------------------- the program, inside a namespace


def _say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _commands(deadline: float) -> Iterator[str]:
    """Lines from stdin until it closes or the deadline passes."""
    pending = b""
    for _ in range(1000):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([0], [], [], left)[0]:
            return
        chunk = os.read(0, 4096)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode().strip()


def _hold(deadline: float) -> None:
    for _ in _commands(deadline):
        pass


def _serve(ip: str, port: int, count: int, on_eof: str, deadline: float) -> None:
    conns = []
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, port))
        listener.listen(count)
        listener.settimeout(IO_TIMEOUT)
        _say("listening", port=port)
        for _ in range(count):
            conn, peer = listener.accept()
            conns.append(conn)
            _say("accepted", local=conn.getsockname()[1], peer=peer[1])
    for conn in conns:
        conn.settimeout(IO_TIMEOUT)
        peer = conn.getpeername()[1]
        for _ in range(10_000):
            if not conn.recv(65536):
                break
        _say("eof", peer=peer)
        if on_eof == "close":
            conn.close()
    if on_eof == "wait":
        for command in _commands(deadline):
            if command == "close":
                for conn in conns:
                    conn.close()
                _say("closed")
                break
    _hold(deadline)  # "hold": the sockets stay open until the program is killed


def _connect(ip: str, port: int, count: int, end: str, deadline: float) -> None:
    kept = []
    for _ in range(count):
        sock = socket.create_connection((ip, port), timeout=IO_TIMEOUT)
        _say("connected", local=sock.getsockname()[1], peer=sock.getpeername()[1])
        if end == "close":
            sock.close()
        else:
            sock.shutdown(socket.SHUT_WR)
            kept.append(sock)
    if end == "shutdown_close":  # each half-closed, then closed: orphans in FIN_WAIT2
        time.sleep(0.3)  # the peer's ACK of our FIN: FIN_WAIT2
        for sock in kept:
            sock.close()
        kept = []
    _say("done")
    _hold(deadline)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["serve", "connect"])
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--on-eof", choices=["close", "hold", "wait"], default="close",
                        help="serve: close at EOF, hold the socket, or wait for `close` on stdin")
    parser.add_argument("--end", choices=["close", "shutdown", "shutdown_close"], default="close",
                        help="connect: close(), or shutdown(SHUT_WR) and keep the socket, or close it after")
    parser.add_argument("--hold", type=float, default=HOLD_SECONDS)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + min(args.hold, HOLD_SECONDS)
    if args.role == "serve":
        _serve(args.ip, args.port, args.count, args.on_eof, deadline)
    else:
        _connect(args.ip, args.port, args.count, args.end, deadline)


if __name__ == "__main__":
    main()
