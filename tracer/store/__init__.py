"""The timeline store: every socket's life, kept and queryable.

``LifecycleStore`` is what the daemon and the API rely on; ``SqliteStore``
(tracer/store/sqlite.py) is the embedded default. A larger backend can take its
place by answering the same calls with the same meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tracer.core.lifecycle import Lifecycle

MAX_LIMIT = 1000


class StoreError(RuntimeError):
    """The store cannot do what was asked (cannot open its file, is closed, failed to read)."""


@dataclass(frozen=True)
class Page:
    total: int  # every match, not only this page
    sockets: list[Lifecycle]
    next: str | None  # cursor for the next page; None on the last one


class LifecycleStore(Protocol):
    def write(self, records: list[Lifecycle]) -> None:
        """Upserts by id: an open record is written again as it changes and the last write
        wins, but a record once closed is never reopened. One call is one transaction."""

    def query(self, port: int | None = None, state: str | None = None, addr: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 100,
              cursor: str | None = None) -> Page:
        """Sockets by service port, a state they were in, an address at either end, and
        lives that overlap [since, until]; ordered by start, then id. ``cursor`` is the
        ``next`` of the previous page of the same query. Bad arguments raise ValueError."""

    def get(self, id: int) -> Lifecycle | None: ...

    def peer(self, record: Lifecycle) -> Lifecycle | None:
        """The other end of the connection when it is on this host too."""

    def next_id(self) -> int:
        """An id above every id ever stored: where the tracker's counter starts."""

    def close_stale(self, ended_at: float) -> int:
        """Closes what a previous run left open (it stopped or crashed); returns how many."""

    def retain(self, now: float) -> int:
        """Deletes by age and by size; returns how many records went."""

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
