"""Which service ports become label values: a bounded, stable set.

Prometheus series must stay few. A port gets a label of its own until ``max_ports``
ports have one; the rest are folded into ``port="other"`` with every count kept.
A port in the ephemeral range never gets a label unless something listens on it:
such a "service port" is a client's random port seen from a socket whose role had
to be guessed. Decisions are kept for the daemon's life, so a series never moves
from one label to another and counters stay monotonic.
"""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "other"


class PortLabels:
    def __init__(self, max_ports: int, ephemeral: range) -> None:
        if max_ports < 0:
            raise ValueError("max_ports must not be negative")
        self.max_ports = max_ports
        self.ephemeral = ephemeral
        self._labels: dict[int | None, str] = {None: OTHER}  # None: the kernel lost the port
        self._given = 0
        self.folded: set[int] = set()

    def decide(self, ports: Iterable[int | None], listening: set[int]) -> None:
        """Decides the ports not seen before: listening ones first, then by number."""
        new = {p for p in ports if p not in self._labels}
        for port in sorted(new, key=lambda p: (p not in listening, p)):
            if self._given < self.max_ports and (port not in self.ephemeral or port in listening):
                self._labels[port] = str(port)
                self._given += 1
            else:
                self._labels[port] = OTHER
                self.folded.add(port)

    def __call__(self, port: int | None) -> str:
        return self._labels[port]
