"""The web server: cheroot, with a bounded pool of worker threads, TLS when the web
config asks for it, and the Guard (tracer/web/guard.py) in front of the app.

Idle connections, new or kept alive, wait in cheroot's selector, not in a worker
(_ReadableFirst), so hundreds of them hold no thread; the event stream's viewers are capped below the
pool's size (VIEWERS), so they cannot take every worker from /metrics.

cheroot's own TLS adapter does the handshake in its one accepting thread: a client
that connects and sends nothing would hold every later connection up until the
socket's timeout. Here the accepting thread only wraps the socket, and the
handshake runs in a worker on the connection's first turn (TlsConnection), bounded
by the same timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.makefile import StreamReader, StreamWriter
from cheroot.ssl import Adapter

from flask import Flask

from tracer.web.guard import Guard
from tracer.web.stream import Viewers
from tracer.web.webconfig import TlsConfig, WebConfig

log = logging.getLogger(__name__)

THREADS = 16  # workers: what answers at once
VIEWERS = THREADS // 2  # live event streams at most, each holding a worker while it lasts
TIMEOUT_S = 10  # a connection's reads and its TLS handshake
REQUEST_QUEUE = 128  # connections ready for a worker, waiting for one
KEEP_ALIVE = 256  # idle connections kept open between requests; past it, closed after their answer


class _TlsAdapter(Adapter):
    def __init__(self, tls: TlsConfig) -> None:  # noqa: D107 (no files: the context is built)
        self.certificate = self.private_key = self.certificate_chain = self.ciphers = None
        self.private_key_password = None
        self.context = tls.context
        self.allowed_sans = tls.client_allowed_sans

    def bind(self, sock):
        return sock

    def wrap(self, sock):
        return (self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False),
                {"wsgi.url_scheme": "https", "HTTPS": "on"})

    def get_environ(self, sock=None) -> dict:
        return {"wsgi.url_scheme": "https", "HTTPS": "on"}

    def makefile(self, sock, mode="r", bufsize=-1):
        return (StreamReader if "r" in mode else StreamWriter)(sock, mode, bufsize)


def _sans(cert: dict) -> set[str]:
    """A verified client certificate's subject alternative names, as the toolkit
    compares them: DNS names, e-mail addresses, IP addresses, URIs."""
    out = set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
        out.add(value)
    return out


class TlsConnection(cheroot_server.HTTPConnection):
    """Does the TLS handshake on the connection's first turn in a worker."""

    _shaken = False

    def communicate(self):
        if not self._shaken:
            try:
                self.socket.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", self.remote_addr, exc)
                return False
            sans = self.server.ssl_adapter.allowed_sans
            if sans:
                cert = self.socket.getpeercert()
                if not cert or not _sans(cert) & set(sans):
                    log.debug("TLS client %s: no allowed SAN in its certificate", self.remote_addr)
                    return False
            self._shaken = True
        return super().communicate()


class _ReadableFirst(cheroot_server.connections.ConnectionManager):
    """A new connection waits in the selector until it has bytes to read, as a
    kept-alive one does. (cheroot's own manager hands a new connection to a worker at
    once, where a client that sends nothing holds the worker until the timeout: 16
    such clients held every worker.)"""

    def _from_server_socket(self, server_socket):
        conn = super()._from_server_socket(server_socket)
        if conn is not None:
            self.put(conn)
        return None  # the selector gives it to a worker when it is readable


class WebServer:
    """cheroot serving ``app`` on an already bound, listening socket."""

    def __init__(self, sock: socket.socket, app: Flask, config: WebConfig | None = None) -> None:
        config = config or WebConfig()
        self.tls = config.tls is not None
        self._server = wsgi.Server(sock.getsockname()[:2], Guard(app, config), numthreads=THREADS, max=THREADS,
                                   timeout=TIMEOUT_S, request_queue_size=REQUEST_QUEUE, accepted_queue_size=REQUEST_QUEUE,
                                   shutdown_timeout=2)
        self._server.server_name = "tcpstate-tracer"
        self._server.keep_alive_conn_limit = KEEP_ALIVE  # scrapers reuse their connections
        self._server.socket = sock  # bound by the daemon first, so a taken port fails before the program loads
        if config.tls is not None:
            self._server.ssl_adapter = _TlsAdapter(config.tls)
            self._server.ConnectionClass = TlsConnection
        self._thread: threading.Thread | None = None
        self._viewers: Viewers | None = app.config.get("VIEWERS")  # the live streams, ended first at stop

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self) -> None:
        srv = self._server
        sock = srv.socket
        # What prepare() does, on our socket instead of one it binds.
        srv._interrupt = None
        srv._start_time = time.time()
        srv.software = srv.server_name
        sock.settimeout(1)
        srv._connections = _ReadableFirst(srv)
        srv.requests.start()
        srv.ready = True
        self._thread = threading.Thread(target=srv.serve, name="web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._viewers is not None:
            self._viewers.close()
        self._server.stop()
        if self._thread is not None:
            self._thread.join(5)
