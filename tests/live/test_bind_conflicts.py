"""Port reuse from live data, in namespaces of the tests' own: a server that closed its
connections first cannot bind its port again without SO_REUSEADDR, and the daemon
reports the conflict with its TIME_WAIT holders and the remedy; with SO_REUSEADDR in
both servers the restart succeeds and nothing is reported; a second listener is told
the first one's owner; `tcpstate-tracer port` says who holds a port; a connect() that
finds no free local port is counted as no_local_port, with the TIME_WAITs that held
the local ports toward its destination."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.live.conftest import ROOT, http_get, tracer_cmd
from tests.live.netns import TestHost, wait_until
from tests.live.observe import samples

PORT = 24690  # any port: the namespaces are the tests' own

# In the namespace: a server on PORT (SO_REUSEADDR as asked) accepts N connections and
# closes each first, so its ends go to TIME_WAIT; it closes its listener; then a new
# server socket (SO_REUSEADDR as asked) binds the port. Prints what bind() got.
RESTART = textwrap.dedent("""
    import errno, json, os, socket, sys, time
    port, n, old_reuse, new_reuse = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
    srv = socket.socket()
    if old_reuse:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen()
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
        a.close()                       # the server's FIN first: its end is the active closer
        assert c.recv(1) == b""
        c.close()
    srv.close()
    time.sleep(0.05)
    new = socket.socket()
    if new_reuse:
        new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        new.bind(("0.0.0.0", port)); got = "ok"
    except OSError as exc:
        got = errno.errorcode[exc.errno]
    new.close()
    print(json.dumps({"bind": got, "pid": os.getpid()}))
""")

# Holds a listener on PORT until stdin closes.
LISTEN = textwrap.dedent("""
    import os, socket, sys
    s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
    print(os.getpid(), flush=True)
    sys.stdin.read()
""")

# A second server on PORT: bind() and listen(), as a server does.
SECOND = textwrap.dedent("""
    import errno, json, os, socket, sys
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); got = "ok"
    except OSError as exc:
        got = errno.errorcode[exc.errno]
    print(json.dumps({"bind": got, "pid": os.getpid()}))
""")

# Connects to 127.0.0.1:PORT, closing each connection first from the client, until
# connect() fails; prints the errno's name and how many connected. At most 10 tries.
EXHAUST = textwrap.dedent("""
    import errno, json, socket, sys, time
    port = int(sys.argv[1])
    srv = socket.socket(); srv.bind(("127.0.0.1", port)); srv.listen()
    done, got = 0, "none"
    for _ in range(10):
        c = socket.socket()
        try:
            c.connect(("127.0.0.1", port))
        except OSError as exc:
            got = errno.errorcode[exc.errno]; c.close(); break
        a, _ = srv.accept(); c.close(); assert a.recv(1) == b""; a.close(); done += 1
    time.sleep(1.5)                     # a client lives on after a failed connect(), as most do
    print(json.dumps({"connect": got, "connected": done}))
""")


def run_in(host: TestHost, code: str, *args: object) -> dict:
    out = host.exec([sys.executable, "-c", code, *map(str, args)]).stdout
    return json.loads(out.strip().splitlines()[-1])


def conflicts_in(daemon, host: TestHost, since: float, port: int = PORT) -> list[dict]:
    """The conflicts on ``port`` in the host's namespace since ``since`` (an earlier test's
    namespace may have had the same inode: the kernel reuses them)."""
    status, body = http_get(f"{daemon.url}/api/v1/bind-conflicts?port={port}")
    assert status == 200, body
    return [c for c in json.loads(body)["conflicts"] if c["netns"] == host.netns_inode and c["time"] >= since]


def conflict_count(daemon, port: int, holder: str) -> float:
    found = samples(daemon.metrics(), "tcpstate_bind_conflicts_total", port=str(port), holder=holder)
    return sum(found.values())


def port_report(port: int, host: TestHost) -> dict | None:
    out = subprocess.run(tracer_cmd("port", str(port), "--json"), cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return next((ns for ns in json.loads(out)["namespaces"] if ns["netns"] == host.netns_inode), None)


def test_a_restart_without_so_reuseaddr_is_refused_and_explained_by_its_time_waits(daemon):
    since = time.time()
    with TestHost("bind-tw") as host:
        before = conflict_count(daemon, PORT, "time_wait")
        got = run_in(host, RESTART, PORT, 3, 0, 0)
        assert got["bind"] == "EADDRINUSE"
        (c,) = wait_until(lambda: conflicts_in(daemon, host, since), "the refused bind() in /api/v1/bind-conflicts")
        assert (c["pid"], c["port"], c["address"], c["reuseaddr"], c["netns_inferred"]) == (
            got["pid"], PORT, "0.0.0.0", False, False)
        assert c["holder"] == "time_wait" and c["holders"]["time_wait"] == 3
        assert 50 < c["holders"]["time_wait_left_s"] <= 60
        assert "SO_REUSEADDR before bind() in this server and in the one that accepted them" in c["remedy"]
        assert conflict_count(daemon, PORT, "time_wait") == before + 1
        # `port` sees the same holders, and the kernel's answer to a new bind() either way:
        # these TIME_WAITs kept the old server's flag (none), so SO_REUSEADDR alone does not help.
        ns = port_report(PORT, host)
        assert ns is not None and ns["holder"] == "time_wait" and ns["time_wait"] == 3
        assert ns["trial"]["ipv4"] == {"plain": "EADDRINUSE", "reuseaddr": "EADDRINUSE"}


def test_a_restart_with_so_reuseaddr_in_both_servers_succeeds_and_nothing_is_reported(daemon):
    since = time.time()
    with TestHost("bind-reuse") as host:
        ok = run_in(host, RESTART, PORT, 3, 1, 1)
        assert ok["bind"] == "ok"
        ns = port_report(PORT, host)
        assert ns is not None and ns["holder"] == "time_wait"
        assert ns["trial"]["ipv4"] == {"plain": "EADDRINUSE", "reuseaddr": "ok"}
        # Then a refused one in the same namespace: once the daemon has reported it, it has
        # read past the restart, which it never reported.
        refused = run_in(host, RESTART, PORT + 1, 1, 1, 0)
        assert refused["bind"] == "EADDRINUSE"
        wait_until(lambda: conflicts_in(daemon, host, since, PORT + 1), "the later refused bind() reported")
        assert conflicts_in(daemon, host, since) == []
        (c,) = conflicts_in(daemon, host, since, PORT + 1)
        assert "SO_REUSEADDR" in c["remedy"]


def test_a_second_listener_is_told_the_first_one_s_owner(daemon):
    since = time.time()
    with TestHost("bind-listen") as host:
        first = host.popen([sys.executable, "-c", LISTEN, str(PORT)])
        owner = int(first.stdout.readline())
        got = run_in(host, SECOND, PORT)
        assert got["bind"] == "EADDRINUSE"
        (c,) = wait_until(lambda: conflicts_in(daemon, host, since), "the second listener's refused bind()")
        assert c["holder"] == "listener"
        (listener,) = c["holders"]["listeners"]
        assert listener["pid"] == owner and listener["comm"].startswith("python")
        assert f"(pid {owner})" in c["remedy"] and "SO_REUSEPORT" in c["remedy"]
        ns = port_report(PORT, host)
        assert ns["holder"] == "listener" and ns["listeners"][0]["pid"] == owner
        assert ns["trial"]["ipv4"] == {"plain": "EADDRINUSE", "reuseaddr": "EADDRINUSE"}
        first.stdin.close()
        first.wait(10)


def test_port_on_a_free_port_says_so():
    with TestHost("port-free") as host:
        assert port_report(PORT, host) is None
        text = subprocess.run(tracer_cmd("port", str(PORT)), cwd=ROOT, capture_output=True, text=True,
                              timeout=60).stdout
        assert f"network namespace {host.netns_inode} " not in text


@pytest.mark.parametrize("ports", ["40000 40001"])
def test_a_connect_that_finds_no_local_port_is_counted_as_no_local_port(daemon, ports):
    with TestHost("no-port") as host:
        host.exec(["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={ports}"])

        def failures(reason: str) -> float:
            return sum(samples(daemon.metrics(), "tcpstate_connect_failures_total", port=str(PORT),
                               reason=reason).values())

        before = {r: failures(r) for r in ("no_local_port", "timeout", "refused")}
        got = run_in(host, EXHAUST, PORT)
        assert got == {"connect": "EADDRNOTAVAIL", "connected": 2}
        wait_until(lambda: failures("no_local_port") == before["no_local_port"] + 1,
                   "the failed connect() counted as no_local_port")
        # Not a timeout, not refused: nothing else counted for it.
        assert {r: failures(r) for r in before} == {**before, "no_local_port": before["no_local_port"] + 1}
        # Explained: the client's two TIME_WAITs toward the server held both ports of the range.
        refused = wait_until(lambda: [e for e in no_local_port(daemon) if e["netns"] == host.netns_inode],
                             "the refused connect() explained")
    cli = subprocess.run(tracer_cmd("conflicts", "--port", str(PORT), "--web.listen-address",
                                    daemon.url.removeprefix("http://")), cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0, cli.stderr
    second = cli.stdout[cli.stdout.index(" DESTINATION "):]  # the table of connects (a namespace's inode recurs)
    row = next(line for line in second.splitlines() if str(host.netns_inode) in line)
    assert f"127.0.0.1:{PORT}" in row and row.endswith("2 TIME_WAIT") and f"{ports.replace(' ', '-')}" in row
    (e,) = refused
    assert (e["netns_inferred"], e["address"], e["port"]) == (False, "127.0.0.1", PORT) and e["comm"].startswith("python")
    assert e["toward"] == {"TIME_WAIT": 2} and e["port_range"] == [int(p) for p in ports.split()]
    assert 0 < e["time_wait_left_s"] <= 60
    assert e["remedy"].startswith(f"2 connection(s) toward 127.0.0.1:{PORT} held the local ports of the 2 in "
                                  f"ip_local_port_range {ports.replace(' ', '-')}, 2 of them in TIME_WAIT")


def no_local_port(daemon) -> list[dict]:
    status, body = http_get(f"{daemon.url}/api/v1/no-local-port?port={PORT}")
    assert status == 200, body
    return json.loads(body)["refused"]
