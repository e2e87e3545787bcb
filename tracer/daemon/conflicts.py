"""Bind conflicts and ports running out: a thread of their own reads the refused
bind() calls from the program's second ring buffer, and the connects the tracker
found refused for want of a local port, explains each and keeps them, newest first,
for the API and the metrics.

The program wakes this thread for each call (the events' ring never wakes anyone),
so the caller's namespace is pinned (an open descriptor of /proc/PID/ns/net) within
microseconds, while the process is still returning from bind(): most exit at once.
Then the holders are read from the kernel's table, filtered to the port, in this
thread: no read of the table sits on the event path. A caller gone before it was
pinned is placed in the namespace where the port was held, when exactly one held it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable

from tracer.core.calls import Call
from tracer.core.clock import Clock
from tracer.core.conflicts import Conflict, Holders, NoLocalPort
from tracer.core.record import comm_text, family_name, format_addr
from tracer.sources import CallSource, kernel_table, port_holders

log = logging.getLogger(__name__)

# (port, netns -> path or None for all) -> (holders by namespace, problems)
HoldersReader = Callable[[int, "dict[int, str] | None"], "tuple[dict[int, Holders], list[str]]"]
# (daddr, family, dport, netns -> path or None for all) -> ((states, TIME_WAIT left) by namespace, problems)
TowardReader = Callable[[bytes, int, int, "dict[int, str] | None"],
                        "tuple[dict[int, tuple[dict[str, int], float]], list[str]]"]


def _read_holders(port: int, netns: dict[int, str] | None) -> tuple[dict[int, Holders], list[str]]:
    return port_holders.holders(port, netns)


def _no_unbound() -> list[tuple]:
    return []


class BindConflicts:
    """Refused binds -> Conflicts, read from ``source`` by the "conflicts" thread;
    ``recent`` and ``counts`` for the web and the metrics (tracer/web/conflicts_api.py,
    tracer/metrics/conflicts.py)."""

    KEEP = 1000  # conflicts kept for the API
    POLL_S = 0.5  # the longest a stop waits for the thread

    def __init__(self, source: CallSource, clock: Clock, read_holders: HoldersReader = _read_holders,
                 keep: int = KEEP, unbound: Callable[[], list[tuple]] = _no_unbound,
                 read_toward: TowardReader = port_holders.toward,
                 read_range: Callable[[str], "tuple[int, int] | None"] = port_holders.local_port_range,
                 pin: "Callable[[int], tuple[int, int] | None]" = kernel_table.pin_namespace,
                 unpin: Callable[[int], None] = os.close,
                 ) -> None:
        self.source = source
        self.clock = clock
        self.read_holders = read_holders
        self.unbound = unbound  # Tracker.take_unbound
        self.read_toward = read_toward
        self.read_range = read_range
        # Pins a caller's namespace: (inode, descriptor) of /proc/PID/ns/net, read through
        # /proc/self/fd/N by the same process (the daemon, or its privileged helper).
        self.pin = pin
        self.unpin = unpin
        self._recent: deque[Conflict] = deque(maxlen=keep)
        self._no_port: deque[NoLocalPort] = deque(maxlen=keep)
        self._counts: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conflicts", daemon=True)

    @property
    def dropped(self) -> int:
        """Refused binds never explained: the program found their ring buffer full."""
        return self.source.calls_lost()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.handle(self.source.read_calls(self.POLL_S))
                self.handle_unbound(self.unbound())
            except Exception:  # a conflict left unexplained must not end the thread
                log.exception("explaining a refused bind() or connect() failed")

    def handle_unbound(self, refused: list[tuple]) -> list[NoLocalPort]:
        """Connects refused for want of a local port ((ts_ns, pid, comm, family, daddr,
        dport), as Tracker.unbound holds them): pins each caller's namespace, then reads
        what held the ports toward the destination."""
        return self._pinned_each(refused, [r[1] for r in refused], self.explain_unbound)

    def _pinned_each(self, items: list, pids: list[int], explain: Callable) -> list:
        """``explain(item, pinned)`` for each item, every caller's namespace pinned first
        (one open each, before any slower read), every pin closed after, whatever fails."""
        pins = [self.pin(pid) for pid in pids]
        try:
            return [explain(item, pinned) for item, pinned in zip(items, pins)]
        finally:
            for pinned in pins:
                if pinned is not None:
                    self.unpin(pinned[1])

    def explain_unbound(self, refused: tuple, pinned: tuple[int, int] | None) -> NoLocalPort:
        ts, pid, comm, fam, daddr, dport = refused
        if pinned is not None:
            ino, fd = pinned
            path = f"/proc/self/fd/{fd}"
            found, problems = self.read_toward(daddr, fam, dport, {ino: path})
            netns, inferred = ino, False
        else:
            found, problems = self.read_toward(daddr, fam, dport, None)
            netns, inferred, path = (next(iter(found)), True, None) if len(found) == 1 else (None, False, None)
        for problem in problems:
            log.warning("connect() toward port %d with no local port: %s", dport, problem)
        toward, left = found.get(netns, ({}, 0.0)) if netns is not None else ({}, 0.0)
        event = NoLocalPort(self.clock.wall(ts), pid, comm_text(comm), netns, inferred, family_name(fam),
                            format_addr(fam, daddr), dport, toward, left,
                            self.read_range(path) if path is not None else None)
        with self._lock:
            self._no_port.append(event)
        log.info("connect() by %s (pid %d) toward %s:%d found no free local port: %s", event.comm, pid,
                 event.address, dport, event.remedy())
        return event

    def no_local_port(self, limit: int | None = None, port: int | None = None) -> list[NoLocalPort]:
        """Connects refused for want of a local port, newest first."""
        with self._lock:
            items = [e for e in reversed(self._no_port) if port is None or e.port == port]
        return items[:limit] if limit is not None else items

    def handle(self, calls: list[Call]) -> list[Conflict]:
        """Pins every caller's namespace first (one open each), then explains the calls."""
        return self._pinned_each(calls, [call.pid for call in calls], self.explain)

    def explain(self, call: Call, pinned: tuple[int, int] | None) -> Conflict:
        """Reads what holds the call's port in its namespace and keeps the conflict."""
        if pinned is not None:
            ino, fd = pinned
            found, problems = self.read_holders(call.port, {ino: f"/proc/self/fd/{fd}"})
            netns, inferred, held = ino, False, found.get(ino, Holders())
        else:
            found, problems = self.read_holders(call.port, None)
            if len(found) == 1:
                (netns, held), = found.items()
                inferred = True
            else:
                netns, inferred, held = None, False, Holders()
        for problem in problems:
            log.warning("bind conflict on port %d: %s", call.port, problem)
        conflict = Conflict(self.clock.wall(call.ts_ns), call, netns, inferred, held)
        with self._lock:
            self._recent.append(conflict)
            key = (call.port, conflict.holder)
            self._counts[key] = self._counts.get(key, 0) + 1
        log.info("bind() of port %d by %s (pid %d) refused: %s", call.port, call.comm, call.pid, conflict.remedy())
        return conflict

    def recent(self, limit: int | None = None, port: int | None = None) -> list[Conflict]:
        """Newest first."""
        with self._lock:
            items = [c for c in reversed(self._recent) if port is None or c.call.port == port]
        return items[:limit] if limit is not None else items

    def counts(self) -> dict[tuple[int, str], int]:
        """(port, holder) -> refused binds, since the start."""
        with self._lock:
            return dict(self._counts)


