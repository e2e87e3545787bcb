"""The Prometheus collector: metric families built from snapshots at scrape time.

It keeps no state of its own. Transition counts come from the source's exact
counters (in the kernel for the live source), socket counts from the tracker.
Labels are service port and states only; addresses, pids and socket ids belong
to the API, never to labels.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tracer.core.states import STATE_NAMES, EventKind, TcpState
from tracer.core.tracker import Tracker
from tracer.sources import EventSource

OTHER_PORT = "other"  # counts whose port the kernel could not keep (counter map full)
_STATE = EventKind.STATE.value


class TcpStateCollector(Collector):
    def __init__(self, source: EventSource, tracker: Tracker) -> None:
        self._source = source
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        transitions = CounterMetricFamily(
            "tcpstate_transitions",
            "TCP state transitions reported by the kernel tracepoint sock:inet_sock_set_state, "
            "by service port (exact: counted in the kernel)",
            labels=["port", "from_state", "to_state"])
        for (port, kind, old, new), n in sorted(self._source.transition_counts().items(), key=_key):
            if kind == _STATE:
                transitions.add_metric([_port(port), STATE_NAMES[old], STATE_NAMES[new]], n)
        yield transitions

        sockets = GaugeMetricFamily(
            "tcpstate_sockets",
            "Sockets now in each TCP state by service port; TIME_WAIT is modelled from orderly "
            "active closes",
            labels=["port", "state"])
        for (port, state), n in sorted(self._tracker.snapshot().items()):
            sockets.add_metric([str(port), STATE_NAMES[state]], n)
        yield sockets

        lost = CounterMetricFamily(
            "tcpstate_events_lost",
            "Events the kernel could not hand to the daemon (ring buffer full); counts stay exact",
            )
        lost.add_metric([], self._source.lost())
        yield lost


def _port(port: int | None) -> str:
    return OTHER_PORT if port is None else str(port)


def _key(item: tuple) -> tuple:
    (port, kind, old, new), _ = item
    return (-1 if port is None else port, kind, old, new)


# Every state name a label can carry, for tests and dashboards.
STATE_LABELS = tuple(s.name for s in TcpState)
