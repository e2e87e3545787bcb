"""The daemon: its threads and their wiring.

One writer thread owns the tracker (pipeline.py, the event reader); one
housekeeping thread runs everything off the event path (housekeeper.py: the stuck
scan, the kernel-table reconcile, the timeline's writes, the loss log); one thread
explains refused bind() calls (conflicts.py); the web server reads snapshots.
start() builds and starts them, run() serves until a signal.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from tracer.config import Config, ConfigError, parse_listen_address
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
from tracer.daemon.signals import ReloadSignal, StopSignals
from tracer.daemon.stuck import StuckScanner
from tracer.host import headers, privileges, sysctl, tracefs
from tracer.host.helper import HelperError, PrivilegedReads
from tracer.metrics import (ConflictFamilies, HealthFamilies, KernelFamilies, TableFamilies, TcpStateCollector,
                            build_info)
from tracer.sources import kernel_table
from tracer.store import LifecycleStore, StoreError
from tracer.web.server import WebServer
from tracer.web import webconfig
from tracer.web.webconfig import WebConfig, WebConfigError

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
    server: WebServer
    registry: CollectorRegistry
    address: str
    helper: PrivilegedReads | None = None  # --run-as: what reads other namespaces


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


def _web_config(cfg: Config) -> WebConfig:
    """The web config file's TLS and users; a warning when the address is reachable
    from elsewhere and nothing protects it."""
    try:
        web = webconfig.load(cfg.web_config_file) if cfg.web_config_file else WebConfig()
    except WebConfigError as exc:
        raise StartupError(str(exc)) from None
    host, _ = parse_listen_address(cfg.web_listen_address)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only localhost is known to stay on the host
        loopback = host == "localhost"
    if not loopback and (web.tls is None or not web.authenticates):
        log.warning("listening on %s %s: anyone who can reach it reads this host's connections; set "
                    "--web.config.file with tls_server_config and basic_auth_users (README, Serving safely)",
                    cfg.web_listen_address,
                    "without TLS or authentication" if web.tls is None and not web.authenticates
                    else "without TLS" if web.tls is None else "without authentication")
    return web


def _start_helper(cfg: Config, listener: socket.socket, source, store) -> PrivilegedReads | None:
    """--run-as: the user must exist; its files handed over; the privileged helper
    started while the daemon is still root."""
    if not cfg.run_as:
        return None
    try:
        user = privileges.account(cfg.run_as)
        privileges.hand_over([cfg.db.parent, cfg.db, *(cfg.db.with_name(cfg.db.name + s) for s in ("-wal", "-shm"))],
                             user)
        return PrivilegedReads()
    except (privileges.PrivilegeError, HelperError, OSError) as exc:
        listener.close()
        source.close()
        store.close()
        raise StartupError(str(exc)) from None


def start(cfg: Config, clock: Clock | None = None) -> Running:
    """Binds the web address, attaches the program, starts the writer and the web server."""
    from tracer.sources.bcc import BccSource, SourceError
    from tracer.web import create_app

    clock = clock or SystemClock()
    started_ns = clock.monotonic_ns()
    web = _web_config(cfg)  # a bad file fails before anything is loaded
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
    previous = store.open_lives()
    tracker = Tracker(int(cfg.timewait_seconds * 1e9), cfg.max_sockets, cfg.rules(), keep_lifecycles=True)
    tracker.next_uid = store.next_id()  # ids stay unique across restarts
    helper = _start_helper(cfg, listener, source, store)
    if helper is None:
        conflicts = BindConflicts(source, clock, unbound=tracker.take_unbound)
    else:
        conflicts = BindConflicts(source, clock, unbound=tracker.take_unbound, read_holders=helper.holders,
                                  read_toward=helper.toward, read_range=helper.local_port_range,
                                  pin=helper.pin, unpin=helper.unpin)
    pipeline = Pipeline(source, tracker, clock)
    ephemeral = sysctl.ephemeral_ports()
    reconciler = Reconciler(tracker, clock, every_s=cfg.timewait_reconcile_seconds, ephemeral=ephemeral,
                            table=kernel_table if helper is None else helper)
    scanner = StuckScanner(tracker, clock)
    # The program is attached: what opens from now on is seen, what was open is loaded.
    reconciler.load_baseline(source, previous)
    # The previous run's open lives the kernel no longer has ended while no daemon ran.
    continued = tracker.corrections.continued
    stale = store.close_stale(clock.now(), keep=continued)
    if previous:
        log.info("timeline: of %d sockets the previous run left open, %d continue, %d marked ended",
                 len(previous), len(continued), stale)
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
    server = WebServer(listener, app, web)
    if helper is not None:  # everything privileged is done: the threads start as the user
        try:
            privileges.drop_to(privileges.account(cfg.run_as))
        except privileges.PrivilegeError as exc:
            helper.close()
            raise StartupError(str(exc)) from None
    tune_gc()
    conflicts.start()
    pipeline.start()
    housekeeper.start()
    server.start()
    log.info("serving /metrics, /healthz, /readyz on %s://%s%s (started in %.2f s)", server.scheme,
             cfg.web_listen_address, ", basic authentication" if web.users else "",
             (clock.monotonic_ns() - started_ns) / 1e9)
    return Running(pipeline, housekeeper, conflicts, store, server, registry, cfg.web_listen_address, helper)


def reload_rules(running: Running, reload: Callable[[], Config]) -> bool:
    """SIGHUP: the stuck thresholds again from the configuration (file, environment,
    flags). A configuration with a problem keeps the rules in force, and says why.
    Other settings need a restart."""
    try:
        rules = reload().rules()
    except (ConfigError, ValueError) as exc:
        log.error("SIGHUP: configuration not reloaded, the stuck thresholds in force stay: %s", exc)
        return False
    running.pipeline.tracker.replace_rules(rules)
    log.info("SIGHUP: stuck thresholds reloaded: %s", "; ".join(r.describe() for r in rules.every()))
    return True


def run(cfg: Config, reload: Callable[[], Config] | None = None) -> int:
    """The `run` command: serves until SIGTERM or SIGINT, reloads the stuck thresholds
    on SIGHUP (``reload`` reads the configuration again); non-zero when the pipeline failed."""
    running = start(cfg)
    stop = StopSignals()
    hup = ReloadSignal()
    while not stop.stopping and not running.pipeline.wait(0):
        if hup.take() and reload is not None:
            reload_rules(running, reload)
        time.sleep(0.2)
    log.info("stopping")
    running.server.stop()
    running.pipeline.stop()
    running.housekeeper.stop()  # after the writer: its last flush sees every event
    running.conflicts.stop()
    running.store.close()
    running.pipeline.source.close()
    if running.helper is not None:
        running.helper.close()
    if running.pipeline.failure:
        log.error("%s", running.pipeline.failure)
        return 1
    return 0
