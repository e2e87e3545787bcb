"""The daemon: one writer thread owns the tracker; the web server reads snapshots.

Nothing slow sits on the event path: the writer drains the kernel's ring buffer in
batches and applies them; scrapes copy small snapshots under the tracker's lock.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry
from werkzeug.serving import make_server

from tracer.host import headers, sysctl, tracefs
from tracer.config import Config, parse_listen_address
from tracer.core.clock import Clock, SystemClock
from tracer.core.detector import Report
from tracer.core.ports import PortLabels
from tracer.core.record import MORE_AT, MORE_TS_AT
from tracer.core.states import TcpState
from tracer.core.tracker import RECONCILED_STATES, Tracker
from tracer.metrics import HealthFamilies, KernelFamilies, TableFamilies, TcpStateCollector, build_info
from tracer.daemon.signals import StopSignals
from tracer.sources import EventSource

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.2
# The writer checks in at least every POLL_TIMEOUT_S; this much silence means it is stuck.
STALL_S = 10.0


def sent_ns(item: tuple) -> int:
    """When the kernel sent an event, or a record (a life is sent at its last transition)."""
    if len(item) > MORE_AT and item[MORE_AT]:
        return item[MORE_TS_AT + item[MORE_AT] - 1]
    return item[0]


class StartupError(RuntimeError):
    """Something the operator can fix stopped the daemon from starting (one line)."""


class Pipeline:
    """Source -> tracker, driven by one writer thread; answers the health probes."""

    def __init__(self, source: EventSource, tracker: Tracker, clock: Clock) -> None:
        self.source = source
        self.tracker = tracker
        self.clock = clock
        self.failure: str | None = None
        self._stop = threading.Event()
        self._cycles = 0
        self._heartbeat_ns = clock.monotonic_ns()
        self.lag_s = 0.0  # how far behind the kernel the last batch was applied
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once the writer has stopped (asked to, or failed)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        source, tracker, clock = self.source, self.tracker, self.clock
        # The kernel's source hands out records, a young socket's life in one.
        read_records = getattr(source, "read_records", None)
        read, apply = (read_records, tracker.apply_records) if read_records else (source.read, tracker.apply_batch)
        sweep = getattr(source, "sweep", None)
        try:
            while not self._stop.is_set():
                batch = read(POLL_TIMEOUT_S)
                if batch is None:
                    break
                now = clock.monotonic_ns()
                if batch:
                    self.lag_s = max(0, now - sent_ns(batch[0])) / 1e9
                    apply(batch)
                    tracker.seen_until_ns = sent_ns(batch[-1])
                else:
                    self.lag_s = 0.0
                    tracker.seen_until_ns = now  # everything sent has been applied
                if sweep is not None:
                    taken = sweep()
                    if taken:
                        apply(taken)
                tracker.expire(now)
                self._heartbeat_ns = now
                self._cycles += 1
        except Exception as exc:  # the writer must not die silently: record it, the daemon exits
            self.failure = f"event pipeline stopped: {type(exc).__name__}: {exc}"
            log.exception("event pipeline stopped")

    # Health, as the web probes see it.
    def alive(self) -> tuple[bool, str]:
        if self.failure:
            return False, self.failure
        if not self._thread.is_alive():
            return False, "event pipeline is not running"
        silent_s = (self.clock.monotonic_ns() - self._heartbeat_ns) / 1e9
        if silent_s > STALL_S:
            return False, f"event pipeline has not checked in for {silent_s:.0f} s"
        return True, "event pipeline running"

    def ready(self) -> tuple[bool, str]:
        ok, detail = self.alive()
        if not ok:
            return ok, detail
        if not self._cycles:
            return False, "program attached, first read of the ring buffer pending"
        return True, f"program attached, {self.tracker.events} events processed"


class Housekeeper:
    """Everything off the event path, in one thread: the stuck-socket scan and the
    timeline's batch write (when there is a store) every ``scan_s``, and every
    ``reconcile_s`` a read of the kernel's socket table (all network namespaces) that
    corrects the model and names namespaces.

    The table read stretches to ten times what it costs, so a host with very many
    sockets in the watched states does not spend its CPU here.
    """

    GRACE_NS = 2_000_000_000  # events still on their way are not differences
    # An open socket reaches the timeline once it is this old, or when it ends if that
    # is sooner: most connections end within seconds, and are then written once.
    SETTLE_NS = 2_000_000_000
    WRITE_CHUNK = 16_384
    # A round of writing ends after this long (unless final): lives may arrive faster
    # than the store takes them, and the scan, the reconcile and the counters must not
    # wait for the timeline to catch up.
    WRITE_ROUND_S = 0.5
    # The ring buffer this full: the timeline writes one chunk a round, so that the
    # event reader catches up before records are lost.
    BEHIND_FILL = 0.25
    # Taking in this many events a second, the reader is near its limit (the machine's
    # churn ceiling is ~290,000): the timeline waits, so that the store's CPU goes to the
    # load instead, and lives wait (packed, bounded) for a quieter moment, unless half
    # of what may wait is waiting.
    BUSY_EVENTS_PER_S = 100_000
    RETAIN_EVERY_S = 10.0  # cheap when there is nothing to delete; at full churn 300 s is gigabytes
    LOSS_LOG_EVERY_S = 10.0  # a loss is logged within a second, then at most this often
    LOSS_MEANING = {
        "program_not_run": "the kernel did not run the program (it was already running on that CPU); "
                           "those transitions are nowhere, and the lives they belong to are incomplete",
        "ring_buffer_full": "the ring buffer was full; counted in tcpstate_transitions_total, "
                            "missing from the model and the timeline",
    }

    def __init__(self, tracker: Tracker, clock: Clock, reconcile_s: float, scan_s: float = 1.0,
                 store: object | None = None, behind: Callable[[], bool] = lambda: False,
                 lost: Callable[[], dict[str, int]] | None = None) -> None:
        self.tracker = tracker
        self.clock = clock
        self.store = store  # tracer.store.LifecycleStore: the timeline
        self.behind = behind  # whether the event reader is falling so far behind that it may lose events
        self.lost = lost  # the source's losses by reason, since it attached
        self._lost_logged: dict[str, int] = {}
        self._lost_logged_at: dict[str, float] = {}
        self.timeline_version = 0
        self.timeline_written_at = 0.0
        self.timeline_written = 0
        self.timeline_not_written = 0  # lives the store refused
        self._rate_at_ns, self._rate_events, self.events_per_s = 0, 0, 0.0
        self.reconcile_s = reconcile_s
        self.scan_s = scan_s
        self.report = tracker.scan(clock.monotonic_ns())
        self.last_reconcile_s = 0.0
        self.reconcile_failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read_table(self, states: list[int], partial_ok: bool) -> list | None:
        """The sockets in ``states`` in every namespace. A namespace that could not be
        read makes the whole read None unless ``partial_ok``: judged against a partial
        table, the sockets of the unread namespace would look gone."""
        from tracer.sources import kernel_table

        try:
            found, problems = kernel_table.dump(states)
        except kernel_table.KernelTableError as exc:
            problems, found = [str(exc)], None
        for problem in problems:
            self.reconcile_failures += 1
            log.warning("kernel socket table: %s", problem)
        return found if partial_ok or not problems else None

    def load_baseline(self, source: object | None = None) -> int:
        """Loads the sockets that exist now, in every namespace, so counts are right from
        the first scrape; tells the program which ports are listened on."""
        from tracer.sources import kernel_table

        started = self.clock.monotonic_ns()
        found = self._read_table([s.value for s in TcpState if s not in (TcpState.CLOSE, TcpState.NEW_SYN_RECV)],
                                 partial_ok=True)
        if found is None:
            return 0
        owners = kernel_table.owners()
        infos = [replace(k, pid=owner[0], comm=owner[1]) if (owner := owners.get(k.inode)) else k for k in found]
        loaded = self.tracker.load_baseline(infos, started, sysctl.ephemeral_ports())
        listeners = {i.conn[1]: (i.pid, i.comm) for i in infos if i.state == TcpState.LISTEN}
        seed = getattr(source, "seed_listeners", None)
        if seed is not None:
            seed(listeners)
        log.info("baseline: %d sockets already open in %d network namespaces (%.2f s)", loaded,
                 len({k.netns for k in found}), (self.clock.monotonic_ns() - started) / 1e9)
        return loaded

    def reconcile_once(self) -> tuple[int, int]:
        started = self.clock.monotonic_ns()
        found = self._read_table(sorted(RECONCILED_STATES | {TcpState.TIME_WAIT.value}), partial_ok=False)
        if found is None:
            return 0, 0
        self.last_reconcile_s = (self.clock.monotonic_ns() - started) / 1e9
        kernel = {k.conn: k for k in found}
        removed, added = self.tracker.reconcile(kernel, started, self.GRACE_NS)
        if removed or added:
            log.debug("TIME_WAIT reconciled with the kernel: %d ended early, %d found", removed, added)
        return removed, added

    def log_losses(self) -> None:
        """A warning when events were lost since the last one, for each reason."""
        if self.lost is None:
            return
        now = time.monotonic()
        for reason, total in self.lost().items():
            new = total - self._lost_logged.get(reason, 0)
            if new > 0 and now >= self._lost_logged_at.get(reason, 0.0) + self.LOSS_LOG_EVERY_S:
                log.warning("%d transitions lost (%s, %d since the start): %s", new, reason, total,
                            self.LOSS_MEANING.get(reason, "see tcpstate_events_lost_total"))
                self._lost_logged[reason] = total
                self._lost_logged_at[reason] = now

    def scan_once(self) -> Report:
        self.report = self.tracker.scan(self.clock.monotonic_ns())
        return self.report

    def flush_timeline(self, final: bool = False) -> int:
        """Writes the socket lives that changed to the store, WRITE_CHUNK at a time (one
        transaction each): all of them when ``final``; else those ended or open for
        SETTLE_NS, and after the first chunk only while the event reader is not at risk
        of losing events (``behind``: the ring buffer a quarter full) and for at most
        WRITE_ROUND_S; nothing while it is busy (taking in BUSY_EVENTS_PER_S) and less
        than half of the lives that may wait are waiting. The reader comes first: it
        shares the interpreter with this thread, and what it falls behind on is lost
        for the metrics too, where a life left for the next round is at worst dropped
        from the timeline (and counted)."""
        if self.store is None:
            return 0
        from tracer.store import StoreError

        now, events = self.clock.monotonic_ns(), self.tracker.events
        if self._rate_at_ns and now > self._rate_at_ns:
            self.events_per_s = (events - self._rate_events) * 1e9 / (now - self._rate_at_ns)
        self._rate_at_ns, self._rate_events = now, events
        if (not final and self.events_per_s > self.BUSY_EVENTS_PER_S
                and self.tracker.pending_ended() < self.tracker.max_pending_lifecycles // 2):
            return 0
        born_before = None if final else now - self.SETTLE_NS
        offset, written, failure = self.clock.offset_ns(), 0, None
        round_ends = time.monotonic() + self.WRITE_ROUND_S
        while records := self.tracker.drain_raw(born_before, self.WRITE_CHUNK):
            try:
                self.store.write(records, offset)
                written += len(records)
            except StoreError as exc:  # the store counts them as dropped
                self.timeline_not_written += len(records)
                failure = exc
            if len(records) < self.WRITE_CHUNK or (not final and (self.behind() or time.monotonic() > round_ends)):
                break
        if not written and failure is None:
            return 0  # nothing was waiting
        del records
        release_free_memory()  # a burst's rows would stay in the RSS
        if failure is not None:
            log.warning("timeline: socket records not written: %s", failure)
        if written:
            self.timeline_written += written
            self.timeline_written_at = time.time()
            self.timeline_version += 1
        return written

    def _run(self) -> None:
        next_reconcile = next_retain = time.monotonic()
        while not self._stop.wait(self.scan_s):
            if time.monotonic() >= next_reconcile:
                self.reconcile_once()
                next_reconcile = time.monotonic() + max(self.reconcile_s, 10 * self.last_reconcile_s)
            self.scan_once()
            self.log_losses()
            self.flush_timeline()
            if self.store is not None and time.monotonic() >= next_retain:
                self.store.retain(time.time())
                next_retain = time.monotonic() + self.RETAIN_EVERY_S
        self.flush_timeline(final=True)  # what changed since the last round, before the daemon exits


@dataclass
class Running:
    pipeline: Pipeline
    housekeeper: Housekeeper
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


# Young objects the cyclic garbage collector lets pile up before it looks at them.
# Python's default (700) has it walk the young objects every few hundred events at
# full churn, which doubled the cost of decoding and applying them
# (tests/bench/pipeline.py: 3.2 -> 1.9 us/event). The tracker's objects form no
# cycles; reference counting frees them.
GC_THRESHOLD = (100_000, 20, 20)


_libc = ctypes.CDLL(None)


def release_free_memory() -> None:
    """Hands the C heap's free memory back to the kernel (glibc keeps it otherwise):
    a burst's temporary lists would stay in the RSS for good."""
    trim = getattr(_libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def tune_gc() -> None:
    """Keeps what start-up made (bcc, Flask, the baseline) out of every collection
    and lets the young generation grow to GC_THRESHOLD."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def start(cfg: Config, clock: Clock | None = None) -> Running:
    """Binds the web address, attaches the program, starts the writer and the web server."""
    from tracer.sources.bcc import BccSource, SourceError
    from tracer.web import create_app

    clock = clock or SystemClock()
    started = time.monotonic()
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

    from tracer.store import StoreError
    from tracer.store.sqlite import SqliteStore

    try:
        store = SqliteStore(cfg.db, cfg.retention, cfg.retention_size)
    except StoreError as exc:
        listener.close()
        source.close()
        raise StartupError(str(exc)) from None
    stale = store.close_stale(time.time())
    if stale:
        log.info("timeline: %d sockets left open by the previous run marked ended", stale)
    tracker = Tracker(int(cfg.timewait_seconds * 1e9), cfg.max_sockets, cfg.rules(), keep_lifecycles=True)
    tracker.next_uid = store.next_id()  # ids stay unique across restarts
    pipeline = Pipeline(source, tracker, clock)
    housekeeper = Housekeeper(tracker, clock, cfg.timewait_reconcile_seconds, store=store,
                              behind=lambda: source.backlog() > Housekeeper.BEHIND_FILL, lost=source.lost)
    # The program is attached: what opens from now on is seen, what was open is loaded.
    housekeeper.load_baseline(source)
    ephemeral = sysctl.ephemeral_ports()
    limits = {"ephemeral_ports": len(ephemeral)}
    if (buckets := sysctl.max_tw_buckets()) is not None:
        limits["tcp_max_tw_buckets"] = buckets
    registry = CollectorRegistry(auto_describe=True)
    labels = PortLabels(cfg.max_ports, ephemeral)
    registry.register(TcpStateCollector(
        KernelFamilies(source, labels), TableFamilies(tracker, labels, stuck=housekeeper),
        HealthFamilies(labels, limits, build_info(source.bcc_version), lag=pipeline, kernel_table=housekeeper,
                       timeline=housekeeper, store=store), labels))
    app = create_app(registry, pipeline, housekeeper, clock, store=store)
    host, port = parse_listen_address(cfg.web_listen_address)
    server = make_server(host, port, app, threaded=True, fd=listener.fileno())
    tune_gc()
    pipeline.start()
    housekeeper.start()
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("serving /metrics, /healthz, /readyz on http://%s (started in %.2f s)",
             cfg.web_listen_address, time.monotonic() - started)
    return Running(pipeline, housekeeper, server, registry, cfg.web_listen_address)


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
    running.housekeeper.store.close()
    running.pipeline.source.close()
    if running.pipeline.failure:
        log.error("%s", running.pipeline.failure)
        return 1
    return 0
