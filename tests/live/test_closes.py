"""How each connection closed, from live data in a namespace of the test's own: who
sent the first FIN and how (close(), shutdown(SHUT_WR), shutdown(SHUT_RDWR), a reset
sent because of SO_LINGER 0), counted as tcpstate_closes_total{port,closer,how} and
kept with each end's life in the timeline (/api/v1/sockets), a half-close with how
long the connection ran one way."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.live.conftest import http_get
from tests.live.netns import TestHost, wait_until
from tests.live.observe import samples

# One connection on 127.0.0.1:PORT in the namespace, closed as asked; both ends are
# this program's. Prints what the client read after its own close or shutdown.
CONNECTION = textwrap.dedent("""
    import json, socket, struct, sys, time
    port, how = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket(); srv.bind(("127.0.0.1", port)); srv.listen()
    c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept(); srv.close()
    c.sendall(b"ping"); assert a.recv(4) == b"ping"
    got = b""
    if how == "client_close":          # the client's FIN first, by close()
        c.close(); assert a.recv(1) == b""; a.close()
    elif how == "server_close":        # the server's FIN first: the client closes second
        a.close(); assert c.recv(1) == b""; c.close()
    elif how == "shut_wr":             # a half-close: the client still reads the reply
        c.shutdown(socket.SHUT_WR); assert a.recv(1) == b""
        time.sleep(ONE_WAY_S)          # the reply takes its time: the connection runs one way
        a.sendall(b"pong"); a.close()
        while chunk := c.recv(16):
            got += chunk
        c.close()
    elif how == "shut_rdwr":
        c.shutdown(socket.SHUT_RDWR); assert a.recv(1) == b""; a.close(); c.close()
    elif how == "linger0":             # close() with SO_LINGER 0: a reset, no FIN
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
        try:
            a.recv(1)
        except ConnectionResetError:
            pass
        a.close()
    print(json.dumps({"read": got.decode()}))
""")

CASES = {
    # how: {(closer, how): connections}, the client's end and the server's
    "client_close": {("local", "close"): 1, ("peer", "close"): 1},
    "server_close": {("local", "close"): 1, ("peer", "close"): 1},
    "shut_wr": {("local", "shutdown_wr"): 1, ("peer", "close"): 1},
    "shut_rdwr": {("local", "shutdown_rdwr"): 1, ("peer", "close"): 1},
    "linger0": {("none", "reset_sent"): 1, ("none", "reset_received"): 1},
}
PORTS = {how: 24700 + i for i, how in enumerate(CASES)}
ONE_WAY_S = 0.3
CONNECTION = CONNECTION.replace("ONE_WAY_S", str(ONE_WAY_S))


def closes(daemon, port: int) -> dict[tuple[str, str], float]:
    found = samples(daemon.metrics(), "tcpstate_closes_total", port=str(port))
    return {(dict(k)["closer"], dict(k)["how"]): v for k, v in found.items() if v}


@pytest.mark.parametrize("how", list(CASES))
def test_each_close_is_counted_by_who_closed_first_and_how(daemon, how):
    port = PORTS[how]
    before = closes(daemon, port)
    with TestHost(f"close-{how}") as host:
        out = host.exec([sys.executable, "-c", CONNECTION, str(port), how]).stdout
    if how == "shut_wr":
        assert json.loads(out.strip().splitlines()[-1]) == {"read": "pong"}, "the half-closed end still reads"
    expected = {k: before.get(k, 0) + n for k, n in CASES[how].items()}
    # The kernel's reset of an abortive close comes after its CLOSE: counted then, or as a
    # timeout a second later; either way once, and the wait below covers both.
    wait_until(lambda: {k: closes(daemon, port).get(k, 0) for k in expected} == expected,
               f"both ends of the {how} connection counted", timeout=10)
    after = closes(daemon, port)
    assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == CASES[how]
    # The timeline keeps the same with each end's life, once both are stored closed.
    lives = wait_until(lambda: ended_lives(daemon, port), f"both ends of the {how} connection stored", timeout=10)
    assert {(s["closer"], s["how"]) for s in lives.values()} == set(CASES[how])
    client = lives["active"]
    if how in ("client_close", "shut_wr", "shut_rdwr"):
        assert client["closer"] == "local" and client["one_way"]["until"] is not None
        one_way = client["one_way"]["until"] - client["one_way"]["since"]
        fin = next(s["since"] for s in client["states"] if s["state"] == "FIN_WAIT1")
        assert client["one_way"]["since"] == fin
        if how == "shut_wr":  # from shutdown(SHUT_WR) to the reply's FIN
            assert ONE_WAY_S <= one_way < ONE_WAY_S + 2, client
    if how == "linger0":
        assert client["one_way"] is None and [s["state"] for s in client["states"]][-1] == "ESTABLISHED"


def ended_lives(daemon, port: int) -> dict[str, dict] | None:
    """The connection's two ends by role, once both are stored ended (or in TIME_WAIT)."""
    status, body = http_get(f"{daemon.url}/api/v1/sockets?port={port}&limit=100")
    assert status == 200, body
    found = {s["role"]: s for s in json.loads(body)["sockets"]
             if s["role"] != "listener" and (not s["open"] or s["states"][-1]["state"] == "TIME_WAIT")}
    return found if set(found) == {"active", "passive"} else None
