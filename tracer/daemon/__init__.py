"""The daemon: its threads and their wiring.

One writer thread owns the tracker (pipeline.py, the event reader); one
housekeeping thread runs everything off the event path (housekeeper.py: the stuck
scan, the kernel-table reconcile, the timeline's writes, the loss log); one thread
explains refused bind() calls (conflicts.py); the web server reads snapshots.
start() builds and starts them, run() serves until a signal.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from werkzeug.serving import make_server

from tracer.config import Config, parse_listen_address
from tracer.core.clock import Clock, SystemClock
from tracer.core.ports import PortLabels
from tracer.core.tracker import Tracker
from tracer.daemon.changes import TimelineChanges
from tracer.daemon.conflicts import BindConflicts
from tracer.daemon.flusher import TimelineFlusher
from tracer.daemon.housekeeper import Housekeeper
from tracer.daemon.losses import LossLogger
from tracer.daemon.memory import tune_gc
from tracer.daemon.pipeline import Pipeline
from tracer.daemon.reconciler import Reconciler
from tracer.daemon.signals import StopSignals
from tracer.daemon.stuck import StuckScanner
from tracer.host import headers, sysctl, tracefs
from tracer.metrics import (ConflictFamilies, HealthFamilies, KernelFamilies, TableFamilies, TcpStateCollector,
                            build_info)
from tracer.store import LifecycleStore, StoreError

log = logging.getLogger(__name__)

__all__ = ["Running", "StartupError", "run", "start", "tune_gc"]


class StartupError(RuntimeError):
    """Something the operator can fix stopped the daemon from starting (one line)."""


@dataclass
class Running:
    pipeline: Pipeline
    housekeeper: Housekeeper
    conflicts: BindConflicts
    store: LifecycleStore
    server: object  # werkzeug BaseWSGIServer
    registry: CollectorRegistry
    address: str


def _bind(address: str) -> socket.socket:
    host, port = parse_listen_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {exc.strerror} "
                           "(is another tcpstate-tracer running? choose another --web.listen-address)") from None
    return sock


def start(cfg: Config, clock: Clock | None = None) -> Running:
    """Binds the web address, attaches the program, starts the writer and the web server."""
    from tracer.sources.bcc import BccSource, SourceError
    from tracer.web import create_app

    clock = clock or SystemClock()
    started_ns = clock.monotonic_ns()
    listener = _bind(cfg.web_listen_address)  # first: a taken port fails fast
    try:
        tracefs.ensure()
        tree = headers.prepare(cfg.cache_dir)
        if tree is not None:
            log.info("kernel headers: %s", tree.how)
        source = BccSource(ringbuf_pages=cfg.ring_buffer_mib * 256, max_socks=cfg.max_sockets)
    except (tracefs.TracefsError, headers.HeadersError, SourceError) as exc:
        listener.close()
        raise StartupError(str(exc)) from None

    from tracer.store.sqlite import SqliteStore

    try:
        store = SqliteStore(cfg.db, cfg.retention, cfg.retention_size)
    except StoreError as exc:
        listener.close()
        source.close()
        raise StartupError(str(exc)) from None
    stale = store.close_stale(clock.now())
    if stale:
        log.info("timeline: %d sockets left open by the previous run marked ended", stale)
    tracker = Tracker(int(cfg.timewait_seconds * 1e9), cfg.max_sockets, cfg.rules(), keep_lifecycles=True)
    tracker.next_uid = store.next_id()  # ids stay unique across restarts
    conflicts = BindConflicts(source, clock, unbound=tracker.take_unbound)
    pipeline = Pipeline(source, tracker, clock)
    ephemeral = sysctl.ephemeral_ports()
    reconciler = Reconciler(tracker, clock, every_s=cfg.timewait_reconcile_seconds, ephemeral=ephemeral)
    scanner = StuckScanner(tracker, clock)
    # The program is attached: what opens from now on is seen, what was open is loaded.
    reconciler.load_baseline(source)
    changes = TimelineChanges()
    flusher = TimelineFlusher(tracker, store, clock, changes, source.backlog)
    reconciler.busy = flusher.reader_busy  # a busy reader puts the table's reads off too
    housekeeper = Housekeeper(clock, scanner, reconciler, LossLogger(source.lost, clock), flusher)
    limits = {"ephemeral_ports": len(ephemeral)}
    if (buckets := sysctl.max_tw_buckets()) is not None:
        limits["tcp_max_tw_buckets"] = buckets
    registry = CollectorRegistry(auto_describe=True)
    labels = PortLabels(cfg.max_ports, ephemeral)
    registry.register(TcpStateCollector(
        KernelFamilies(source, labels), TableFamilies(tracker, labels, stuck=scanner),
        HealthFamilies(labels, limits, build_info(source.bcc_version), lag=pipeline, kernel_table=reconciler,
                       timeline=flusher, store=store), labels, conflicts=ConflictFamilies(conflicts, labels)))
    app = create_app(registry, pipeline, scanner, clock, store=store, changes=changes, conflicts=conflicts)
    host, port = parse_listen_address(cfg.web_listen_address)
    server = make_server(host, port, app, threaded=True, fd=listener.fileno())
    tune_gc()
    conflicts.start()
    pipeline.start()
    housekeeper.start()
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("serving /metrics, /healthz, /readyz on http://%s (started in %.2f s)",
             cfg.web_listen_address, (clock.monotonic_ns() - started_ns) / 1e9)
    return Running(pipeline, housekeeper, conflicts, store, server, registry, cfg.web_listen_address)


def run(cfg: Config) -> int:
    """The `run` command: serves until SIGTERM or SIGINT; non-zero when the pipeline failed."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no log line per scrape
    running = start(cfg)
    stop = StopSignals()
    while not stop.stopping and not running.pipeline.wait(0):
        time.sleep(0.2)
    log.info("stopping")
    running.server.shutdown()
    running.pipeline.stop()
    running.housekeeper.stop()  # after the writer: its last flush sees every event
    running.conflicts.stop()
    running.store.close()
    running.pipeline.source.close()
    if running.pipeline.failure:
        log.error("%s", running.pipeline.failure)
        return 1
    return 0
