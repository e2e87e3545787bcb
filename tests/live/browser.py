"""A real headless Chromium (Debian's chromium and chromium-driver) for the page tests,
and a stand-in for the JSON API that serves canned sockets.

Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium explicitly, so
Selenium Manager never runs and nothing is downloaded. The fake API answers on the
contract's paths (/api/v1/sockets, /api/v1/sockets/<id>, /api/v1/stream) and keeps
every request's query, so a test can see what the page asked for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.live.conftest import cannot_run
from tracer.web import timeline
from tracer.web.server import WebServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As root Chromium needs --no-sandbox; the rest keeps it from calling home or updating.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--force-device-scale-factor=1",
)

# -- canned sockets -------------------------------------------------------------------

# One loopback connection, client closing first, as the tracepoint showed it (README):
# offsets in seconds from the client's connect().
CLIENT = (("SYN_SENT", 0.0), ("ESTABLISHED", 0.000321), ("FIN_WAIT1", 0.000360),
          ("FIN_WAIT2", 0.000484), ("TIME_WAIT", 0.000487))
SERVER = (("SYN_RECV", 0.000344), ("ESTABLISHED", 0.000350), ("CLOSE_WAIT", 0.000366),
          ("LAST_ACK", 0.000479))
SERVER_CLOSED = 0.000496
TIME_WAIT_S = 60.0


def _spans(steps: tuple[tuple[str, float], ...], start: float, scale: float, data: float,
           end: float | None) -> list[dict[str, Any]]:
    """Spans from step offsets; `data` seconds of ESTABLISHED are added after the handshake."""
    times = [start + off * scale + (data if i >= 2 else 0.0) for i, (_, off) in enumerate(steps)]
    out = []
    for i, (state, _) in enumerate(steps):
        until = times[i + 1] if i + 1 < len(steps) else end
        out.append({"state": state, "since": round(times[i], 6), "until": None if until is None else round(until, 6)})
    return out


def connection(n: int, start: float, now: float, port: int = 8080, data: float = 0.012,
               scale: float = 1.0) -> list[dict[str, Any]]:
    """The client (id 2n+1) and server (id 2n+2) records of one connection."""
    cid, sid = 2 * n + 1, 2 * n + 2
    cport = 40000 + 37 * n % 20000
    tw_since = start + CLIENT[-1][1] * scale + data
    tw_end = tw_since + TIME_WAIT_S
    client_open = tw_end > now
    common = {"netns": 4026531840, "family": "ipv4", "laddr": "127.0.0.1", "raddr": "127.0.0.1",
              "service_port": port}
    client = {**common, "id": cid, "lport": cport, "rport": port, "role": "active", "pid": 3808 + n,
              "comm": "curl", "open": client_open,
              "states": _spans(CLIENT, start, scale, data, None if client_open else tw_end)}
    server = {**common, "id": sid, "lport": port, "rport": cport, "role": "passive", "pid": 2211,
              "comm": "nginx", "open": False,
              "states": _spans(SERVER, start, scale, data, start + SERVER_CLOSED * scale + data)}
    return [client, server]


def ten_connections(now: float) -> list[dict[str, Any]]:
    """20 sockets: 10 client-closed connections to port 8080, 3 s apart, clients in TIME_WAIT."""
    rnd = random.Random(7)
    sockets = []
    for n in range(10):
        start = now - 45 + 3 * n + rnd.uniform(0, 0.5)
        sockets += connection(n, start, now, data=rnd.uniform(0.004, 0.040), scale=rnd.uniform(0.8, 1.4))
    return sockets


def remote_peers(now: float) -> list[dict[str, Any]]:
    """Sockets whose other end is on another host (documentation addresses, RFC 5737): a
    listener, a connection accepted from a remote client, one made to a remote server."""
    common = {"netns": 4026531840, "family": "ipv4", "service_port": 8080, "pid": 2211, "comm": "nginx"}
    listener = {**common, "id": 1, "laddr": "0.0.0.0", "lport": 8080, "raddr": "0.0.0.0", "rport": 0,
                "role": "listener", "open": True,
                "states": [{"state": "LISTEN", "since": round(now - 50, 6), "until": None}]}
    t = now - 30
    accepted = {**common, "id": 2, "laddr": "192.0.2.10", "lport": 8080, "raddr": "198.51.100.7",
                "rport": 51512, "role": "passive", "open": True,
                "states": [{"state": "SYN_RECV", "since": round(t, 6), "until": round(t + 0.000021, 6)},
                           {"state": "ESTABLISHED", "since": round(t + 0.000021, 6), "until": None}]}
    t = now - 20
    steps = (("SYN_SENT", 0.0), ("ESTABLISHED", 0.0213), ("FIN_WAIT1", 1.2346), ("FIN_WAIT2", 1.2531),
             ("TIME_WAIT", 1.2719))
    made = {**common, "id": 3, "laddr": "192.0.2.10", "lport": 43110, "raddr": "203.0.113.5", "rport": 443,
            "role": "active", "service_port": 443, "pid": 4120, "comm": "python3", "open": True,
            "states": _spans(steps, t, 1.0, 0.0, None)}
    return [listener, accepted, made]


def many_sockets(count: int, now: float) -> list[dict[str, Any]]:
    """`count` sockets over ten minutes: mostly closed connections, some still open,
    some servers left in CLOSE_WAIT (a leak) so that every hue shows up."""
    rnd = random.Random(11)
    sockets: list[dict[str, Any]] = []
    n = 0
    while len(sockets) < count:
        start = now - 600 + 600 * n / (count / 2) + rnd.uniform(0, 0.05)
        pair = connection(n, start, now, port=rnd.choice((8080, 8443, 5432)),
                          data=rnd.expovariate(1 / 2.0), scale=rnd.uniform(0.5, 3))
        if n % 23 == 0:  # the application never closed: CLOSE_WAIT until now
            client, server = pair
            client["states"] = client["states"][:4]
            client["states"][-1]["until"] = None
            client["open"] = True
            server["states"] = server["states"][:3]
            server["states"][-1]["until"] = None
            server["open"] = True
        sockets += pair
        n += 1
    return sockets[:count]


# -- the API stand-in -----------------------------------------------------------------

class FakeApi:
    """The JSON API's contract over canned sockets, plus the timeline blueprint.

    stream: "events" (an event stream that sends whatever `notify` is given), "refused"
    (503, as past the cap on viewers) or "absent" (404, an API without a stream).
    """

    def __init__(self, sockets: list[dict[str, Any]], stream: str = "events") -> None:
        self.sockets = sorted(sockets, key=lambda s: s["states"][0]["since"])
        self.by_id = {s["id"]: s for s in self.sockets}
        ends = {(s["laddr"], s["lport"], s["raddr"], s["rport"]): s["id"] for s in self.sockets if s["rport"]}
        self.peers = {sid: ends.get((s["raddr"], s["rport"], s["laddr"], s["lport"]))
                      for sid, s in self.by_id.items()}
        self.stream = stream
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._listeners: list[queue.Queue] = []
        self.stopped = threading.Event()
        self.app = self._build()

    def requests_to(self, path: str) -> list[dict[str, str]]:
        with self._lock:
            return [q for p, q in self.requests if p == path]

    def notify(self) -> None:
        with self._lock:
            for q in self._listeners:
                q.put({"at": time.time()})

    def _build(self) -> Flask:
        app = Flask(__name__)
        app.register_blueprint(timeline.bp)
        api = self

        @app.before_request
        def record() -> None:
            with api._lock:
                api.requests.append((request.path, request.args.to_dict()))

        def bad(message: str):
            return jsonify(error=message, status=400), 400

        @app.get("/api/v1/sockets")
        def sockets():
            args = request.args
            # As the store's: a cursor is bound to the filters it was handed out with.
            key = hashlib.sha256(repr(sorted((k, v) for k, v in args.items()
                                             if k not in ("limit", "cursor"))).encode()).hexdigest()[:8]
            offset = 0
            if "cursor" in args:
                at, _, bound = args["cursor"].partition("-")
                if bound != key or not at.isdigit():
                    return bad("cursor: it belongs to a query with other filters")
                offset = int(at)
            try:
                limit = int(args.get("limit", 1000))
                since = float(args["since"]) if "since" in args else None
                until = float(args["until"]) if "until" in args else None
                port = int(args["port"]) if "port" in args else None
            except ValueError as exc:
                return bad(f"bad parameter: {exc}")
            if not 1 <= limit <= 1000:
                return bad("limit must be between 1 and 1000")
            addr = args.get("addr")
            if addr:
                try:
                    ipaddress.ip_address(addr)
                except ValueError:
                    return bad(f"addr {addr!r} is not an IP address")
            state = args.get("state")
            chosen = [s for s in api.sockets if api._matches(s, port, addr, state, since, until)]
            page = chosen[offset:offset + limit]
            nxt = f"{offset + limit}-{key}" if offset + limit < len(chosen) else None
            return jsonify(total=len(chosen), sockets=page, next=nxt)

        @app.get("/api/v1/sockets/<int:sid>")
        def one(sid: int):
            s = api.by_id.get(sid)
            if s is None:
                return jsonify(error=f"no socket {sid}", status=404), 404
            return jsonify({**s, "peer": api.peers.get(sid)})

        if self.stream != "absent":
            @app.get("/api/v1/stream")
            def stream():
                if api.stream == "refused":
                    return jsonify(error="too many live viewers (at most 0)", status=503), 503
                mine: queue.Queue = queue.Queue()
                with api._lock:
                    api._listeners.append(mine)

                def events() -> Iterator[str]:
                    try:
                        yield "retry: 1000\n\n"
                        while not api.stopped.is_set():
                            try:
                                data = mine.get(timeout=0.5)
                            except queue.Empty:
                                yield ": keepalive\n\n"
                                continue
                            yield f"event: changed\ndata: {json.dumps(data)}\n\n"
                    finally:
                        with api._lock:
                            api._listeners.remove(mine)

                return Response(events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})

        # The attention panel's sources: nothing stuck, nothing refused, over canned sockets.
        @app.get("/api/v1/stuck")
        def stuck():
            return jsonify(scanned_at=time.time(), total=0, sockets=[], counts=[])

        @app.get("/api/v1/bind-conflicts")
        def bind_conflicts():
            return jsonify(conflicts=[])

        @app.get("/api/v1/no-local-port")
        def no_local_port():
            return jsonify(refused=[])

        return app

    @staticmethod
    def _matches(s: dict[str, Any], port: int | None, addr: str | None, state: str | None,
                 since: float | None, until: float | None) -> bool:
        if port is not None and port not in (s["lport"], s["rport"], s["service_port"]):
            return False
        if addr and addr not in (s["laddr"], s["raddr"]):
            return False
        if state and all(span["state"] != state for span in s["states"]):
            return False
        start = s["states"][0]["since"]
        end = s["states"][-1]["until"]
        if until is not None and start > until:
            return False
        if since is not None and end is not None and end < since:
            return False
        return True


@contextmanager
def serve(app: Flask, on_stop: Any = None) -> Iterator[str]:
    """The app on 127.0.0.1 and a free port, served as the daemon serves it (cheroot,
    behind the Guard and its Content-Security-Policy); yields its base URL. ``on_stop``
    runs before the server stops (it ends the stand-in's streams, which hold workers)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = WebServer(sock, app)
    server.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        if on_stop is not None:
            on_stop()
        server.stop()


@contextmanager
def fake_api(sockets: list[dict[str, Any]], stream: str = "events") -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi(sockets, stream)
    try:
        with serve(api.app, on_stop=api.stopped.set) as url:
            yield api, url
    finally:
        api.stopped.set()


# -- the browser -------------------------------------------------------------------

@contextmanager
def chromium(workdir: Path, width: int = 1600, height: int = 1100) -> Iterator[Any]:
    """A Selenium driver for a fresh headless Chromium; quits it on the way out."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            cannot_run(f"{path} is missing: install Debian's {package} package (make test-setup)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        cannot_run("selenium is not installed: pip install -e '.[test]' (make setup)")
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download drivers) never runs.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, timeout: float = 10.0, what: str = "") -> Any:
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or script} (last: {value!r})")
        time.sleep(0.05)


def console_errors(driver: Any, allow: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser console entries, less those that contain one of `allow`."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


def ladder(driver: Any) -> dict[str, Any]:
    return driver.execute_script("""
        const svg = document.querySelector('#ladder-drawing svg');
        const steps = [...svg.querySelectorAll('g.step:not(.mark)')];
        return {
            client: steps.filter(g => g.dataset.side === 'client').map(g => g.dataset.state),
            server: steps.filter(g => g.dataset.side === 'server').map(g => g.dataset.state),
            labels: steps.map(g => [...g.querySelectorAll('text')].map(t => t.textContent)),
            segments: [...svg.querySelectorAll('g.arrow text')].map(t => t.textContent),
            unseen: svg.querySelectorAll('g.arrow.unseen:not(.resent)').length,
            resent: [...svg.querySelectorAll('g.arrow.resent')].map(g => g.dataset.segment),
            marks: [...svg.querySelectorAll('g.step.mark')].map(g => [g.dataset.side, g.dataset.state,
                                                                     g.querySelector('text').textContent]),
            titles: [...svg.querySelectorAll('text.side-title')].map(t => t.textContent),
            caption: document.getElementById('ladder-caption').textContent,
            hidden: document.getElementById('ladder').hidden,
        };""")
