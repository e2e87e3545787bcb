"""Real TCP traffic on loopback for live tests: bounded, and cleaned up."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class Run:
    port: int
    client_ports: list[int] = field(default_factory=list)
    server_ports: list[int] = field(default_factory=list)


def listener(host: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1024)
    return srv


def client_closed(port: int, n: int, host: str = "127.0.0.1", family: int = socket.AF_INET,
                  connect_host: str | None = None, abort: bool = False) -> Run:
    """n connections to a fresh listener on ``port``; the client closes first, the server
    closes after reading EOF (so the client ends in TIME_WAIT). ``abort`` makes the
    client close with SO_LINGER 0: a reset instead of a FIN. The listener is closed
    before returning."""
    run = Run(port)
    srv = listener(host, port, family)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            srv.settimeout(10)
            for _ in range(n):
                conn, peer = srv.accept()
                run.server_ports.append(peer[1])
                with conn:
                    conn.settimeout(10)
                    try:
                        while conn.recv(4096):
                            pass
                    except ConnectionResetError:
                        pass
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    try:
        for _ in range(n):
            client = socket.socket(family, socket.SOCK_STREAM)
            client.settimeout(10)
            client.connect((connect_host or host, port))
            run.client_ports.append(client.getsockname()[1])
            if abort:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
    finally:
        server.join(20)
        srv.close()
    if errors:
        raise errors[0]
    return run


def quiet_port(low: int = 20000, high: int = 30000) -> int:
    """A port below the ephemeral range that no socket uses, TIME_WAIT included, so a test
    can compare counts with the kernel's even when it ran a minute ago."""
    import random
    import subprocess

    used = set()
    for line in subprocess.run(["ss", "-Htan"], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        for endpoint in fields[3:5]:
            port = endpoint.rpartition(":")[2]
            if port.isdigit():
                used.add(int(port))
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port not in used:
            return port
    raise RuntimeError(f"no unused port in {low}-{high}")
