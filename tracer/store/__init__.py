"""The timeline store: every socket's life, kept and queryable.

``LifecycleStore`` declares every call the daemon and the API make; ``SqliteStore``
(tracer/store/sqlite.py) is the embedded default. A larger backend can take its
place by answering the same calls with the same meaning. Lives go in in the shape
the tracker hands them over (lifecycle.RawLife) and come out as Lifecycles.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tracer.core.lifecycle import Lifecycle, RawLife
from tracer.core.record import format_addr, parse_addr

MAX_LIMIT = 1000


class StoreError(RuntimeError):
    """The store cannot do what was asked (cannot open its file, is closed, failed to read)."""


@dataclass(frozen=True)
class Page:
    total: int  # every match, not only this page
    sockets: list[Lifecycle]
    next: str | None  # cursor for the next page; None on the last one


def normalise_addr(text: str) -> str:
    """The API's ``addr`` filter as stores compare addresses (an IPv4-mapped IPv6
    address as IPv4, IPv6 in its short form); ValueError naming the ``addr`` parameter
    when it is none. Only a filter is parsed: stored addresses are made from the raw
    bytes once, on the way in."""
    try:
        return format_addr(*parse_addr(text.strip()))
    except ValueError:
        raise ValueError(f"addr: {text!r} is not an IPv4 or IPv6 address") from None


class LifecycleStore(Protocol):
    def write(self, lives: Sequence[RawLife], offset_ns: int) -> None:
        """The tracker's hand-over (Tracker.drain_raw); ``offset_ns`` makes its monotonic
        nanoseconds Unix time (Clock.offset_ns), kept to the microsecond. Upserts by id:
        an open life is written again as it changes and the last write wins, but a life
        once ended is never reopened. One call is one transaction; StoreError when it
        failed (nothing of it was written). A life that cannot be stored is counted
        under ``dropped`` and the rest are written."""

    def query(self, port: int | None = None, state: str | None = None, addr: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 100,
              cursor: str | None = None) -> Page:
        """Sockets by service port, a state they were in, an address at either end, and
        lives that overlap [since, until]; ordered by start, then id. ``cursor`` is the
        ``next`` of the previous page of the same query. Bad arguments raise ValueError."""

    def get(self, id: int) -> Lifecycle | None:
        """The life with this id; None when there is none (never seen, or retained away)."""

    def peer(self, record: Lifecycle) -> Lifecycle | None:
        """The other end of the connection when it is on this host too; ``record`` is
        one this store returned (by ``get`` or ``query``)."""

    def next_id(self) -> int:
        """An id above every id ever stored: where the tracker's counter starts."""

    def open_lives(self) -> list[Lifecycle]:
        """Every life still open: at start, what a previous run left open."""

    def close_stale(self, ended_at: float, keep: Collection[int] = ()) -> int:
        """Closes what a previous run left open (it stopped or crashed), but for the ids
        in ``keep`` (continued lives); returns how many."""

    def retain(self, now: float) -> int:
        """Deletes by age and by size; returns how many records went."""

    def stats(self) -> dict[str, Any]:
        """``rows`` and ``bytes`` on disk now; ``writes`` (records written), ``dropped``
        (records not written) and ``deleted`` (by retention) since the store was opened."""

    def close(self) -> None:
        """Closes the store; a second close is harmless, any other call a StoreError."""
