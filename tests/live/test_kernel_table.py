"""The kernel's socket table in every network namespace: real namespaces, real sockets.

Each test makes its own namespaces (``ip netns add tst-kt-...``) and runs its
traffic inside them on loopback, in bounded subprocesses; finalizers kill the
processes and delete the namespaces whatever happens.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from tracer.sources import kernel_table as kt
from tracer.core import record
from tracer.core.states import TcpState

LOOP4 = bytes([127, 0, 0, 1]) + bytes(12)
LOOP6 = socket.inet_pton(socket.AF_INET6, "::1")
PORT = 20701  # inside the tests' own namespaces: nothing else listens there

# Listens on 127.0.0.1 and [::] (dual stack), connects to each (the second over a
# v4-mapped address and over ::1), prints the connections' local ports, and holds
# everything until stdin closes (or 60 s pass).
HOLD = r"""
import socket, sys
port = int(sys.argv[1])
l4 = socket.socket(); l4.bind(("127.0.0.1", port)); l4.listen()
l6 = socket.socket(socket.AF_INET6); l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l6.bind(("::", port + 1)); l6.listen()
held = []
for family, host, listener in ((socket.AF_INET, "127.0.0.1", l4), (socket.AF_INET, "127.0.0.1", l6),
                               (socket.AF_INET6, "::1", l6)):
    c = socket.socket(family); c.settimeout(5); c.connect((host, listener.getsockname()[1]))
    a, _ = listener.accept()
    held += [c, a]
    print(c.getsockname()[1], flush=True)
print("ready", flush=True)
sys.stdin.readline()
"""

# n client-closed connections to a listener on 127.0.0.1:port: the client ends in
# TIME_WAIT. Prints the client ports.
CHURN = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(4096); srv.settimeout(10)
ports = []
for _ in range(n):
    c = socket.socket(); c.settimeout(10); c.connect(("127.0.0.1", port))
    ports.append(c.getsockname()[1])
    a, _ = srv.accept()
    c.close()
    a.settimeout(10)
    while a.recv(64):
        pass
    a.close()
print(" ".join(map(str, ports)), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def netns_ino(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


@pytest.fixture
def make_netns(live_host) -> Iterator[Callable[[], str]]:
    """Makes namespaces with loopback up; every one is deleted at the end, even on failure."""
    made: list[str] = []

    def make() -> str:
        name = f"tst-kt-{secrets.token_hex(4)}"
        ip("netns", "add", name)
        made.append(name)
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)


@pytest.fixture
def holder(make_netns) -> Iterator[tuple[str, subprocess.Popen, list[int]]]:
    """A process inside a fresh namespace holding listeners and established connections."""
    name = make_netns()
    proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", HOLD, str(PORT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ports = []
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            ports.append(int(line))
        else:
            raise AssertionError(f"the holder ended early: {proc.stderr.read()}")
        yield name, proc, ports
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def churn(name: str, port: int, n: int) -> list[int]:
    out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", CHURN, str(port), str(n)],
                         check=True, capture_output=True, text=True, timeout=60)
    return [int(p) for p in out.stdout.split()]


def test_sockets_are_found_in_the_namespace_they_live_in(holder, make_netns):
    name, _proc, (c4, c_mapped, c6) = holder
    other = make_netns()
    ino = netns_ino(name)
    listed = kt.namespaces()
    assert ino in listed and netns_ino(other) in listed

    sockets, problems = kt.dump([TcpState.ESTABLISHED, TcpState.LISTEN])
    assert problems == []
    mine = {(s.family, s.saddr, s.sport, s.daddr, s.dport, s.state) for s in sockets if s.netns == ino}
    E, L = TcpState.ESTABLISHED, TcpState.LISTEN
    assert mine == {
        (record.AF_INET, LOOP4, PORT, bytes(16), 0, L),
        (record.AF_INET6, bytes(16), PORT + 1, bytes(16), 0, L),
        (record.AF_INET, LOOP4, c4, LOOP4, PORT, E),
        (record.AF_INET, LOOP4, PORT, LOOP4, c4, E),
        # accepted by the dual-stack listener: an AF_INET6 socket with v4-mapped addresses
        (record.AF_INET, LOOP4, c_mapped, LOOP4, PORT + 1, E),
        (record.AF_INET, LOOP4, PORT + 1, LOOP4, c_mapped, E),
        (record.AF_INET6, LOOP6, c6, LOOP6, PORT + 1, E),
        (record.AF_INET6, LOOP6, PORT + 1, LOOP6, c6, E),
    }
    assert all(s.inode and s.cookie for s in sockets if s.netns == ino)
    assert not [s for s in sockets if s.netns == netns_ino(other)]


def test_only_the_states_asked_for_come_back(holder):
    name, _proc, _ports = holder
    ino = netns_ino(name)
    sockets, problems = kt.dump([TcpState.LISTEN], {ino: f"/run/netns/{name}"})
    assert problems == []
    assert sorted(s.sport for s in sockets) == [PORT, PORT + 1]
    assert {s.state for s in sockets} == {TcpState.LISTEN}


def test_owners_maps_a_listeners_inode_to_its_process(holder):
    name, proc, _ports = holder
    ino = netns_ino(name)
    sockets, _ = kt.dump([TcpState.LISTEN], {ino: f"/run/netns/{name}"})
    listener = next(s for s in sockets if s.sport == PORT)
    pid, comm = kt.owners()[listener.inode]
    # `ip netns exec` execs the command in place: the pid is the one Popen started
    assert pid == proc.pid
    assert comm.startswith("python")


def test_timewait_in_a_namespace_is_found(make_netns):
    name = make_netns()
    ports = churn(name, PORT, 3000)  # several datagrams' worth of answer
    ino = netns_ino(name)

    found = kt.timewait_connections()
    for sport in ports:
        left = found[(LOOP4, sport, LOOP4, PORT)]
        assert 0 < left <= 60_000_000_000

    sockets, problems = kt.dump([TcpState.TIME_WAIT], {ino: f"/run/netns/{name}"})
    assert problems == []
    assert sorted(s.sport for s in sockets) == sorted(ports)
    assert {(s.netns, s.state, s.inode, s.dport) for s in sockets} == {(ino, TcpState.TIME_WAIT, 0, PORT)}


def test_a_deleted_namespace_disappears(make_netns):
    name = make_netns()
    ino = netns_ino(name)
    path = f"/run/netns/{name}"
    assert kt.namespaces()[ino] == path
    ip("netns", "delete", name)
    assert ino not in kt.namespaces()
    # listed before it was deleted: skipped, and no problem
    assert kt.dump([TcpState.LISTEN, TcpState.TIME_WAIT], {ino: path}) == ([], [])


def test_the_calling_thread_stays_in_its_namespace(holder):
    name, _proc, _ports = holder
    seen: list[tuple[int, int, int]] = []

    def call() -> None:
        before = os.stat("/proc/thread-self/ns/net").st_ino
        sockets, _ = kt.dump([TcpState.LISTEN])
        seen.append((before, os.stat("/proc/thread-self/ns/net").st_ino, len(sockets)))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    call()
    for t in threads:
        t.join(30)
    own = os.stat("/proc/self/ns/net").st_ino
    assert len(seen) == 4
    assert all(before == after == own and n >= 2 for before, after, n in seen)


def test_a_path_that_is_no_namespace_is_a_problem(tmp_path, live_host):
    plain = tmp_path / "not-a-namespace"
    plain.write_text("")
    ino = os.stat(plain).st_ino
    sockets, problems = kt.dump([TcpState.LISTEN], {ino: str(plain)})
    assert sockets == []
    assert len(problems) == 1 and str(plain) in problems[0]
    assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
