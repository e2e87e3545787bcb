"""What the kernel's socket table tells the model: the sockets that were open before
the daemon started (``load_baseline``), and the differences no tracepoint shows
(``reconcile``): a TIME_WAIT killed early or kept by a retransmitted FIN, a full
socket whose transition was missed. Works on the tracker's parts, under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tracer.core.kernel_socket import Conn, KernelSocket
from tracer.core.lifecycle import KIND_NAMES, Lifecycle
from tracer.core.record import comm_raw, parse_addr
from tracer.core.sockets import SocketEntry
from tracer.core.states import ROLE_NAMES, Role, TcpState
from tracer.core.timewait import EXPIRES, NETNS, SINCE, TimeWait

_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value
_LISTEN = TcpState.LISTEN.value
# A re-armed TIME_WAIT timer shows as more time left in the kernel than in the model.
_REARM_SLACK_NS = 1_000_000_000


_ROLES = {name: value for value, name in ROLE_NAMES.items()}
_MARK_KINDS = {name: kind for kind, name in KIND_NAMES.items()}
_OPENING = ("SYN_SENT", "SYN_RECV", "LISTEN")


def _mono(unix_s: float, offset_ns: int) -> int:
    """A stored time (Unix seconds, to the microsecond) as monotonic nanoseconds; by
    whole microseconds, since a float holds Unix nanoseconds only to 256 ns."""
    return round(unix_s * 1e6) * 1000 - offset_ns


def _conn_of(life: Lifecycle) -> Conn:
    return (parse_addr(life.laddr)[1], life.lport, parse_addr(life.raddr)[1], life.rport)


def _take(earlier: dict[Conn, list[Lifecycle]], k: KernelSocket) -> Lifecycle | None:
    """The previous run's open life of this kernel socket: the same connection, in the
    same namespace when the life knew its namespace."""
    lives = earlier.get(k.conn)
    if not lives:
        return None
    for i, life in enumerate(lives):
        if life.netns is None or life.netns == k.netns:
            return lives.pop(i)
    return None


class Corrections:
    def __init__(self, tracker, reconciled_states: frozenset[int]) -> None:
        self.tracker = tracker
        self.reconciled_states = reconciled_states
        self.timewait_removed = 0
        self.timewait_added = 0
        self.timewait_rearmed = 0

    def load_baseline(self, kernel: Iterable[KernelSocket], now_ns: int,
                      ephemeral: range = range(32768, 61000), previous: Iterable[Lifecycle] = (),
                      offset_ns: int = 0) -> int:
        """Loads the sockets that exist before any event names them. Their age is
        known only from now on. Their role is inferred, since nobody saw them open: a
        socket on a port something listens on is the passive side, and so is one whose
        local port is outside the ephemeral range while its peer's is inside it (its
        listener may be gone); any other is the active opener.

        ``previous``: the lives a previous run left open in the timeline. A socket the
        kernel still has continues its life (its id, role, service port, owner, states
        and marks; ``offset_ns`` turns their Unix times back into monotonic ones), so a
        restart neither duplicates it nor ends it. What happened to it while no daemon
        ran is not known: a state it changed to meanwhile begins now. Returns the
        sockets loaded; ``self.continued`` holds the ids of the lives continued."""
        kernel = list(kernel)
        listening = {k.sport for k in kernel if k.state == _LISTEN}
        earlier: dict[Conn, list[Lifecycle]] = {}
        for life in previous:
            try:
                earlier.setdefault(_conn_of(life), []).append(life)
            except ValueError:  # an address the store could not have written: leave it to end
                continue
        self.continued: set[int] = set()
        loaded = 0
        with self.tracker.lock:
            for k in kernel:
                if k.state == _CLOSE:
                    continue
                lport, rport = k.sport, k.dport
                life = _take(earlier, k)
                if life is not None:
                    role, port = _ROLES.get(life.role, Role.UNKNOWN.value), life.service_port
                elif k.state == _LISTEN:
                    role, port = Role.LISTENER.value, lport
                elif lport in listening or (lport not in ephemeral and rport in ephemeral):
                    role, port = Role.PASSIVE.value, lport
                else:
                    role, port = Role.ACTIVE.value, rport
                if k.state == _TIME_WAIT:
                    if k.conn not in self.tracker.tw:
                        self._add_kernel_timewait(k, now_ns, role, port, life, offset_ns)
                        loaded += 1
                    continue
                entry = SocketEntry.from_kernel(k, now_ns, role, port)
                self._identify(entry, life, offset_ns)
                if self.tracker.journal.keep:
                    self.tracker.journal.changed[entry.uid] = entry
                self.tracker.table.add_baseline(entry)
                loaded += 1
            self.tracker.table.baseline_sockets += loaded
        return loaded

    def _identify(self, entry: SocketEntry, life: Lifecycle | None, offset_ns: int) -> None:
        """A new id, or the previous run's life of this socket, continued."""
        if life is None:
            entry.uid = self.tracker.journal.take_uid()
            return
        entry.uid = life.id
        self.continued.add(life.id)
        history: list[int] = []
        for span in life.states:
            history += (TcpState[span.state].value, _mono(span.since, offset_ns))
        if history[-2] == entry.state:  # in it since the previous run saw it enter it
            entry.since_ns = history[-1]
        else:
            history += (entry.state, entry.since_ns)
        entry.history = history
        entry.first_ns = history[1]
        entry.opened = life.states[0].state in _OPENING
        if not entry.pid and life.pid:
            entry.pid, entry.comm = life.pid, comm_raw(life.comm or "")
        if life.marks:
            marks = [life.marks_dropped]
            for m in life.marks:
                marks += (_MARK_KINDS[m.kind], TcpState[m.state].value, _mono(m.at, offset_ns))
            entry.marks = marks

    def _add_kernel_timewait(self, k: KernelSocket, now_ns: int, role: int, port: int,
                             life: Lifecycle | None = None, offset_ns: int = 0) -> TimeWait:
        # Without a re-arm the TIME_WAIT began (length - time left) ago; that is a
        # lower bound of its age, hence age_known stays False.
        entry = SocketEntry.from_kernel(k, self._kernel_began(k, now_ns), role, port)
        self._identify(entry, life, offset_ns)
        tw = self.tracker._enter_timewait(entry)
        self.tracker.tw.extend(tw, now_ns + k.expires_ns)
        return tw

    def _kernel_began(self, k: KernelSocket, at_ns: int) -> int:
        """When a TIME_WAIT the kernel's table showed at ``at_ns`` began, or was last re-armed."""
        return at_ns - max(0, self.tracker.timewait_ns - k.expires_ns)

    def reconcile(self, kernel: Mapping[Conn, KernelSocket], dumped_at_ns: int,
                  grace_ns: int) -> tuple[int, int]:
        """Makes the model agree with the kernel's socket table, read at ``dumped_at_ns``.

        ``kernel`` holds the TIME_WAIT sockets and those in self.reconciled_states, by
        connection. The model misses what no tracepoint shows: a
        TIME_WAIT killed early (a reset from a peer's listener, RFC 1337), or kept
        longer (a retransmitted FIN re-arms its timer). Only TIME_WAITs older than
        ``grace_ns`` (and not about to end) are judged, so events still on their way
        are no differences. Full sockets in self.reconciled_states the kernel no longer
        has are dropped, and those it has in another state take that state (a
        transition was missed). Every socket found gets its network namespace.
        Returns (TIME_WAITs removed, TIME_WAITs added).
        """
        removed = added = 0
        # A reader running behind has not applied the latest closes: a connection that
        # reused a TIME_WAIT's ports shows in the table as that TIME_WAIT re-armed.
        horizon = min(dumped_at_ns, self.tracker.seen_until_ns or dumped_at_ns) - grace_ns
        ending = dumped_at_ns - self.tracker.timewait_ns + grace_ns
        tw = self.tracker.tw
        with self.tracker.lock:
            for conn, entry in list(tw.by_conn.items()):
                k = kernel.get(conn)
                since, expires = entry[SINCE], entry[EXPIRES]
                if k is None or k.state != _TIME_WAIT:
                    if since < horizon and (expires or since > ending):
                        tw.cancel(entry, dumped_at_ns)
                        removed += 1
                    continue
                entry[NETNS] = k.netns
                model_left = (expires or since + self.tracker.timewait_ns) - dumped_at_ns
                began = self._kernel_began(k, dumped_at_ns)  # or was last re-armed
                if k.expires_ns > model_left + _REARM_SLACK_NS and began < horizon:
                    if not expires:
                        self.timewait_rearmed += 1
                    tw.extend(entry, dumped_at_ns + k.expires_ns)
            for conn, k in kernel.items():
                if k.state == _TIME_WAIT and conn not in tw.by_conn:
                    since = self._kernel_began(k, dumped_at_ns)
                    if since < horizon:
                        self._add_kernel_timewait(k, dumped_at_ns, Role.UNKNOWN.value, conn[3])
                        added += 1
            self._reconcile_live(kernel, dumped_at_ns, horizon)
        self.timewait_removed += removed
        self.timewait_added += added
        return removed, added

    def _reconcile_live(self, kernel: Mapping[Conn, KernelSocket], dumped_at_ns: int, horizon: int) -> None:
        """Full sockets in the states the table was read for: a missed transition (the
        kernel skips the program now and then) must not leave a socket in a state it
        has left, or in the table after it is gone. Caller holds the lock."""
        for entry in list(self.tracker.table.sockets.values()):
            if entry.state not in self.reconciled_states or entry.since_ns >= horizon or not entry.sport:
                continue  # not read, too young to judge, or connect() has not bound it yet
            k = kernel.get(entry.conn)
            if k is not None and k.state == entry.state:
                entry.netns = k.netns
                continue
            if k is None:
                self.tracker._vanished(entry, dumped_at_ns)
            else:
                self.tracker.table.move(entry, k.state, dumped_at_ns)
                entry.netns = k.netns
                if self.tracker.journal.keep:
                    self.tracker.journal.changed[entry.uid] = entry
