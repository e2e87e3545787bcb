"""Shared by the unit tests: building event tuples without spelling all fifteen fields."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tracer.core import record
from tracer.core.states import EventKind, Role, TcpState

LOOPBACK = bytes([127, 0, 0, 1]) + bytes(12)


class Healthy:
    """The web's Health (tracer/web/health.py) of a daemon that runs and is ready."""

    def alive(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"


def make_event(
    sk: int,
    old: TcpState | int,
    new: TcpState | int,
    *,
    ts_ns: int = 0,
    sport: int = 0,
    dport: int = 0,
    service_port: int = 0,
    role: Role | int = Role.UNKNOWN,
    kind: EventKind | int = EventKind.STATE,
    saddr: bytes = LOOPBACK,
    daddr: bytes = LOOPBACK,
    family: int = record.AF_INET,
    pid: int = 0,
    comm: bytes = b"",
    flags: int = 0,
) -> record.Event:
    """An event tuple in record.FIELDS order, with the positions taken from record.Field."""
    ev: list = [None] * len(record.FIELDS)
    ev[record.Field.TS] = ts_ns
    ev[record.Field.SK] = sk
    ev[record.Field.SADDR] = saddr
    ev[record.Field.DADDR] = daddr
    ev[record.Field.PID] = pid
    ev[record.Field.SPORT] = sport
    ev[record.Field.DPORT] = dport
    ev[record.Field.SERVICE_PORT] = service_port
    ev[record.Field.FAMILY] = family
    ev[record.Field.KIND] = int(kind)
    ev[record.Field.OLD] = int(old)
    ev[record.Field.NEW] = int(new)
    ev[record.Field.ROLE] = int(role)
    ev[record.Field.FLAGS] = flags
    ev[record.Field.COMM] = comm.ljust(16, b"\0")  # char comm[TCPSTATE_COMM_LEN]
    return tuple(ev)


@pytest.fixture
def event() -> Callable[..., record.Event]:
    """The make_event factory, for tests that take it as a fixture."""
    return make_event
