"""A bind() refused with EADDRINUSE, explained: what held the port in the caller's
namespace at that moment, and the remedy that fits it.

Linux refuses a TCP bind() of a port when another socket in the same namespace is
bound to it (the wildcard or the same address), unless both sockets set SO_REUSEADDR
before bind() and the other one is not listening, or both set SO_REUSEPORT (same
user). A TIME_WAIT socket keeps the SO_REUSEADDR of the socket it was: an accepted
connection's is its listener's. So a restarted server binds past its old TIME_WAITs
only when the old server set SO_REUSEADDR as well as the new one (measured in
tests/live/test_bind_conflicts.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tracer.core.calls import Call

HOLDERS = ("listener", "time_wait", "other", "none")


@dataclass(frozen=True)
class ListenerHolder:
    address: str
    pid: int
    comm: str


@dataclass(frozen=True)
class Holders:
    """What held a port in one namespace."""

    listeners: tuple[ListenerHolder, ...] = ()
    time_wait: int = 0
    time_wait_left_s: float = 0.0  # until the last of them expires
    others: dict[str, int] = field(default_factory=dict)  # state name -> sockets

    @property
    def holder(self) -> str:
        """The strongest holder: a listener, then TIME_WAIT, then any other socket."""
        if self.listeners:
            return "listener"
        if self.time_wait:
            return "time_wait"
        return "other" if self.others else "none"


def _who(listener: ListenerHolder) -> str:
    return f"{listener.comm} (pid {listener.pid})" if listener.pid else "a process not found in /proc"


def remedy(port: int, h: Holders, reuseaddr: bool = False, reuseport: bool = False) -> str:
    """What to do about a bind() of ``port`` (by a socket with those options) that
    ``h`` refuses, in one or two sentences."""
    kind = h.holder
    if kind == "listener":
        first = h.listeners[0]
        text = (f"port {port} is listened on by {_who(first)} on {first.address}: stop that server "
                "first, or bind another port")
        if reuseport:
            return text + ("; this socket set SO_REUSEPORT, so the listener did not (or runs as another "
                           "user): a port is shared only when every socket on it sets SO_REUSEPORT before bind()")
        return text + ("; two servers share a listening port only when both set SO_REUSEPORT before "
                       "bind() and run as the same user")
    if kind == "time_wait":
        wait = f"{h.time_wait_left_s:.0f} s"
        held = f"{h.time_wait} connection(s) in TIME_WAIT hold port {port}, the last for {wait} more"
        if reuseaddr:
            return (f"{held}: this socket set SO_REUSEADDR, the server that accepted them did not (a "
                    "TIME_WAIT keeps the SO_REUSEADDR of its listener): set it before bind() in that "
                    f"server too, or wait {wait}")
        return (f"{held}: set SO_REUSEADDR before bind() in this server and in the one that accepted "
                f"them (a TIME_WAIT keeps the SO_REUSEADDR of its listener), or wait {wait}")
    if kind == "other":
        states = ", ".join(f"{n} {state}" for state, n in sorted(h.others.items()))
        text = f"sockets of earlier connections still hold port {port} ({states})"
        if "CLOSE_WAIT" in h.others:
            text += "; a CLOSE_WAIT is a connection its process never closed"
        if reuseaddr:
            return text + (": this socket set SO_REUSEADDR, they did not: set it before bind() in the "
                           "server that made them too, or end those connections")
        return text + (": set SO_REUSEADDR before bind() in this server and in the one that made them, "
                       "or end those connections")
    return (f"nothing held port {port} by the time the daemon looked (the holder had closed, or "
            "its namespace could not be read): a retry may succeed")


@dataclass(frozen=True)
class Conflict:
    """One refused bind() and what it met."""

    time: float  # Unix seconds of the call
    call: Call
    netns: int | None  # None: the caller had gone and no namespace held the port
    netns_inferred: bool  # the caller had gone: the namespace is the one where the port was held
    holders: Holders

    @property
    def holder(self) -> str:
        return self.holders.holder

    def remedy(self) -> str:
        return remedy(self.call.port, self.holders, self.call.reuseaddr, self.call.reuseport)

    def to_json(self) -> dict:
        c = self.call
        h = self.holders
        return {
            "time": self.time,
            "pid": c.pid,
            "comm": c.comm,
            "netns": self.netns,
            "netns_inferred": self.netns_inferred,
            "address": c.addr,
            "port": c.port,
            "reuseaddr": c.reuseaddr,
            "reuseport": c.reuseport,
            "holder": h.holder,
            "holders": {
                "listeners": [asdict(x) for x in h.listeners],
                "time_wait": h.time_wait,
                "time_wait_left_s": round(h.time_wait_left_s, 3),
                "time_wait_free_at": (self.time + h.time_wait_left_s) if h.time_wait else None,
                "others": dict(h.others),
            },
            "remedy": self.remedy(),
        }


@dataclass(frozen=True)
class NoLocalPort:
    """A connect() refused with EADDRNOTAVAIL: every local port it could bind toward
    its destination was taken. What held them: the caller's sockets toward that
    address and port, by state, and the namespace's ip_local_port_range."""

    time: float  # Unix seconds of the failure
    pid: int
    comm: str
    netns: int | None  # None: the caller had gone and no namespace held sockets toward the destination
    netns_inferred: bool  # the caller had gone: the one namespace with sockets toward the destination
    family: str
    address: str  # the destination
    port: int
    toward: dict[str, int] = field(default_factory=dict)  # state name -> sockets toward the destination
    time_wait_left_s: float = 0.0  # until the first of its TIME_WAITs expires: a port frees then
    port_range: tuple[int, int] | None = None  # ip_local_port_range in that namespace, None: not read

    def remedy(self) -> str:
        held = sum(self.toward.values())
        tw = self.toward.get("TIME_WAIT", 0)
        span = "" if self.port_range is None else (
            f" of the {self.port_range[1] - self.port_range[0] + 1} in ip_local_port_range "
            f"{self.port_range[0]}-{self.port_range[1]}")
        if not held:
            return (f"no free local port toward {self.address}:{self.port}, and nothing held one toward it by the "
                    "time the daemon looked: other destinations' connections, or bound sockets, use the range; "
                    "widen net.ipv4.ip_local_port_range")
        text = f"{held} connection(s) toward {self.address}:{self.port} held the local ports{span}"
        if tw:
            text += (f", {tw} of them in TIME_WAIT (the first frees in {self.time_wait_left_s:.0f} s): this end "
                     "closed first, so the 2MSL wait is this end's. Reuse connections (keep-alive, a pool), let "
                     "the server close first, set net.ipv4.tcp_tw_reuse=1 (a connect() may then take over a "
                     "TIME_WAIT when timestamps make it safe), or widen net.ipv4.ip_local_port_range")
        else:
            text += "; widen net.ipv4.ip_local_port_range, or open fewer connections at once toward it"
        return text

    def to_json(self) -> dict:
        return {
            "time": self.time, "pid": self.pid, "comm": self.comm, "netns": self.netns,
            "netns_inferred": self.netns_inferred, "family": self.family,
            "address": self.address, "port": self.port, "toward": dict(self.toward),
            "time_wait_left_s": round(self.time_wait_left_s, 3),
            "port_range": list(self.port_range) if self.port_range else None,
            "remedy": self.remedy(),
        }
