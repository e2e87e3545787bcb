"""Stuck sockets: sockets older in their state than that state's threshold.

LAST_ACK and TIME_WAIT are stuck past 2MSL: a LAST_ACK socket whose FIN is never
acknowledged, a TIME_WAIT whose timer the peer's retransmitted FIN keeps re-arming.
The other lingering states have thresholds of their own (2MSL unless configured,
per state and per port): CLOSE_WAIT (the application never called close(), the
classic leak), FIN_WAIT2 (orphaned: closed by its owner, the peer never finishes),
FIN_WAIT1, SYN_SENT and SYN_RECV.

A FIN_WAIT2 socket whose owner half-closed it with shutdown(SHUT_WR) and still holds
it is not stuck: it may still read, and waits on the peer (whose CLOSE_WAIT is the
leak, where the peer's host is traced). It becomes an orphan once its owner calls
close(), which the tracepoint shows as FIN_WAIT2 -> FIN_WAIT2 (``held_half_closed``).

The detector only reads the tracker: ``scan`` returns what is stuck now, and the
tracker counts each socket once per state as it crosses its threshold, whether a
scan saw it or it left the state between two scans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, TcpState
from tracer.core.timewait import EXPIRES, PORT, SINCE

WATCHED: tuple[TcpState, ...] = (
    TcpState.LAST_ACK, TcpState.TIME_WAIT, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT1,
    TcpState.FIN_WAIT2, TcpState.SYN_SENT, TcpState.SYN_RECV,
)

WHY = {
    TcpState.LAST_ACK: "our FIN is never acknowledged: the peer is gone or its final ACK is lost",
    TcpState.TIME_WAIT: "the peer keeps retransmitting its FIN, re-arming the timer: our final ACK is lost",
    TcpState.CLOSE_WAIT: "the peer closed, and the application never called close() (a socket leak)",
    TcpState.FIN_WAIT2: "orphaned: its owner closed it, the kernel keeps it (net.ipv4.tcp_fin_timeout) and the "
                        "peer never sent its FIN",
    TcpState.FIN_WAIT1: "our FIN is never acknowledged",
    TcpState.SYN_SENT: "connect() gets no answer",
    TcpState.SYN_RECV: "the handshake's final ACK never came",
}


def held_half_closed(state: int, flags: int, closed_by_owner: bool) -> bool:
    """A FIN_WAIT2 socket its owner shut down for writing and still holds: not stuck."""
    return state == TcpState.FIN_WAIT2 and bool(flags & (F_SHUT_WR | F_SHUT_RDWR)) and not closed_by_owner


@dataclass(frozen=True)
class Rule:
    state: TcpState
    threshold_ns: int
    port: int | None  # None: the state's default
    two_msl: bool  # the threshold is 2MSL

    @property
    def threshold_s(self) -> float:
        return self.threshold_ns / 1e9

    def limit(self) -> str:
        return f"2MSL ({self.threshold_s:g} s)" if self.two_msl else f"{self.threshold_s:g} s"

    def describe(self) -> str:
        scope = f" (rule for port {self.port})" if self.port is not None else ""
        return f"{self.state.name} longer than {self.limit()}{scope}: {WHY[self.state]}"


@dataclass(frozen=True)
class Rules:
    """Thresholds by state, overridable per port. Built once from the configuration."""

    defaults: Mapping[int, Rule]
    ports: Mapping[int, Mapping[int, Rule]] = field(default_factory=dict)

    @classmethod
    def build(cls, msl_s: float, states: Mapping[str, float] | None = None,
              ports: Mapping[int, Mapping[str, float]] | None = None) -> "Rules":
        """``states`` and ``ports`` map state names (any spelling TcpState.parse takes) to seconds."""
        two_msl_ns = int(2 * msl_s * 1e9)

        def rule(state: TcpState, seconds: float | None, port: int | None) -> Rule:
            if seconds is None:
                return Rule(state, two_msl_ns, port, True)
            return Rule(state, int(seconds * 1e9), port, False)

        overrides = {TcpState.parse(k): v for k, v in (states or {}).items()}
        defaults = {s.value: rule(s, overrides.get(s), None) for s in WATCHED}
        per_port = {
            port: {TcpState.parse(k).value: rule(TcpState.parse(k), v, port) for k, v in table.items()}
            for port, table in (ports or {}).items()
        }
        unwatched = [s for s in overrides if s.value not in defaults]
        unwatched += [TcpState.parse(k) for t in (ports or {}).values() for k in t
                      if TcpState.parse(k).value not in defaults]
        if unwatched:
            raise ValueError(f"no stuck rule for {', '.join(sorted({s.name for s in unwatched}))}: "
                             f"thresholds exist for {', '.join(s.name for s in WATCHED)}")
        return cls(defaults, per_port)

    def rule(self, port: int, state: int) -> Rule | None:
        table = self.ports.get(port)
        if table is not None and state in table:
            return table[state]
        return self.defaults.get(state)

    def every(self) -> list[Rule]:
        """The default rule of each watched state, then each port's overrides."""
        return [*self.defaults.values(), *(r for table in self.ports.values() for r in table.values())]

    def lowest_ns(self) -> dict[int, int]:
        """Per state, the lowest threshold over all ports: below it nothing can be stuck."""
        low = {state: r.threshold_ns for state, r in self.defaults.items()}
        for table in self.ports.values():
            for state, r in table.items():
                low[state] = min(low[state], r.threshold_ns)
        return low


@dataclass(frozen=True)
class Stuck:
    """One flagged socket, as the API and the CLI show it."""

    entry: object  # tracer.core.tracker.SocketEntry (a copy of its fields is taken by the caller)
    rule: Rule
    age_ns: int
    # (segments retransmitted in this state, when the last was) at the scan; None: none seen
    retransmits: tuple[int, int] | None = None

    def evidence(self, now_ns: int) -> str:
        """What was seen, in one line: "LAST_ACK for 63 s: our FIN retransmitted 7 times
        (sent 8), the last 10 s ago, never acknowledged"; without retransmissions, the
        state's age and what it means."""
        state = self.rule.state
        head = f"{state.name} for {self.age_ns / 1e9:.0f} s"
        if self.retransmits is None:
            return f"{head}, longer than {self.rule.limit()}: {WHY[state]}"
        n, last_ns = self.retransmits
        what, outcome = _RETRANSMITTED.get(state, ("data", "not all acknowledged"))
        return (f"{head}: {what} retransmitted {n} time{'s' if n != 1 else ''} (sent {n + 1}), the last "
                f"{max(0, now_ns - last_ns) / 1e9:.0f} s ago, {outcome}")


# What a socket in a watched state retransmits, and what that says.
_RETRANSMITTED = {
    TcpState.LAST_ACK: ("our FIN", "never acknowledged"),
    TcpState.FIN_WAIT1: ("our FIN", "never acknowledged"),
    TcpState.CLOSING: ("our FIN", "never acknowledged"),
    TcpState.SYN_SENT: ("our SYN", "never answered"),
    TcpState.SYN_RECV: ("our SYN-ACK", "the handshake's final ACK never came"),
}


@dataclass(frozen=True)
class Report:
    """What one scan found."""

    at_ns: int
    stuck: list[Stuck]
    # (service port, state) -> sockets stuck now; every watched state of every port in use.
    counts: dict[tuple[int, int], int]
    # (service port, state) -> age in ns of the oldest socket now in that state.
    oldest_ns: dict[tuple[int, int], int]


_CLOSE = TcpState.CLOSE.value
_TIME_WAIT = TcpState.TIME_WAIT.value


def judge(live: Iterable, timewait: Iterable, ports: Iterable[int], rules: Rules, floors: Mapping[int, int],
          timewait_ns: int, now_ns: int) -> Report:
    """The stuck sockets among copies of the table's entries (``live``: SocketEntry)
    and the TIME_WAIT model's (``timewait``: TimeWait), oldest first, with the stuck
    count of every watched state of every port in ``ports`` and the oldest age of each
    (port, state). ``floors``: the lowest threshold of each watched state, below which
    no rule needs asking. A half-closed FIN_WAIT2 its owner still holds is not stuck
    (held_half_closed). Pure: the tracker takes the copies under its lock and counts
    the crossings."""
    stuck: list[Stuck] = []
    oldest: dict[tuple[int, int], int] = {}
    counts = {(port, state): 0 for port in ports for state in floors}
    for entry in live:
        state = entry.state
        if state == _CLOSE:
            continue
        age = now_ns - entry.since_ns
        key = (entry.port, state)
        if age > oldest.get(key, -1):
            oldest[key] = age
        if state in floors and age > floors[state] and not held_half_closed(state, entry.flags,
                                                                             entry.closed_by_owner):
            rule = rules.rule(entry.port, state)
            if age > rule.threshold_ns:
                r = entry.retransmits
                stuck.append(Stuck(entry, rule, age, (r[1], r[2]) if r is not None and r[0] == state else None))
                counts[key] = counts.get(key, 0) + 1
    tw_floor = floors.get(_TIME_WAIT)
    for entry in timewait:
        since, expires, port = entry[SINCE], entry[EXPIRES], entry[PORT]  # by index: the hot part of a scan
        age = now_ns - since if expires else min(now_ns - since, timewait_ns)
        key = (port, _TIME_WAIT)
        if age > oldest.get(key, -1):
            oldest[key] = age
        if tw_floor is not None and age > tw_floor:
            rule = rules.rule(port, _TIME_WAIT)
            if age > rule.threshold_ns:
                stuck.append(Stuck(entry, rule, age))
                counts[key] = counts.get(key, 0) + 1
    stuck.sort(key=lambda s: -s.age_ns)
    return Report(now_ns, stuck, counts, oldest)
