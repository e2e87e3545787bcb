"""A socket's life as the timeline stores and shows it: who it was and each state it was in.

The tracker hands these out (open ones as they change, closed ones once, when the
socket ends, TIME_WAIT included); the store keeps them; the API and the page show
them. Times are Unix seconds with fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    state: str  # TcpState name
    since: float
    until: float | None  # None: the socket is in this state now


@dataclass(frozen=True)
class Lifecycle:
    id: int  # unique across daemon restarts (the store hands out the first one)
    netns: int | None
    family: str  # "ipv4" or "ipv6"
    laddr: str
    lport: int
    raddr: str
    rport: int
    role: str  # "active", "passive", "listener", "unknown"
    service_port: int
    pid: int | None
    comm: str | None
    open: bool  # still alive (TIME_WAIT counts as alive)
    states: list[Span] = field(default_factory=list)

    @property
    def started(self) -> float:
        return self.states[0].since

    @property
    def ended(self) -> float | None:
        return None if self.open else self.states[-1].until

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "netns": self.netns, "family": self.family,
            "laddr": self.laddr, "lport": self.lport, "raddr": self.raddr, "rport": self.rport,
            "role": self.role, "service_port": self.service_port, "pid": self.pid, "comm": self.comm,
            "open": self.open,
            "states": [{"state": s.state, "since": s.since, "until": s.until} for s in self.states],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Lifecycle":
        states = [Span(s["state"], s["since"], s["until"]) for s in obj["states"]]
        return cls(**{k: v for k, v in obj.items() if k != "states"}, states=states)
