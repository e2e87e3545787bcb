"""The journal of socket lives for the timeline store: which lives changed since the
store last took them, and which ended, bounded.

Lives reach the journal in three forms, each the cheapest its producer has, and all
leave it as one shape, ``lifecycle.RawLife`` (``drain``):
- an open socket of the table or the TIME_WAIT model (it changed: written as it is
  now, and again as it changes);
- an ended life packed by ``lifecycle.pack_ended`` (the table's sockets);
- a kernel record with its id (``lifecycle.record_life``): a socket born and closed
  in one record, which never had an entry of its own, or whose TIME_WAIT ended.
Past ``max_pending`` ended lives the oldest quarter is dropped and counted: a store
that cannot keep up costs timeline rows, not memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import repeat

from tracer.core.lifecycle import RawLife, record_life, unpack_ended

# Ended lives waiting for the store at most (Tracker.max_pending_lifecycles).
PENDING_LIVES_MAX = 1 << 20


class Journal:
    def __init__(self, keep: bool, max_pending: int) -> None:
        self.keep = keep  # only when a store drains it
        self.next_uid = 1
        self.max_pending = max_pending
        self.dropped = 0
        # uid -> the open socket (tracker.SocketEntry or timewait.TimeWait): changed since the last drain.
        self.changed: dict[int, object] = {}
        # Ended lives, oldest first: packed bytes, or lifecycle.record_life's arguments.
        self.ended: list[bytes | tuple] = []

    def take_uid(self) -> int:
        uid = self.next_uid
        self.next_uid += 1
        return uid

    def take_uids(self, n: int) -> range:
        start = self.next_uid
        self.next_uid += n
        return range(start, start + n)

    def pend(self, item: bytes | tuple) -> None:
        ended = self.ended
        if len(ended) >= self.max_pending:
            self._drop()
        ended.append(item)

    def pend_many(self, items: list[bytes | tuple]) -> None:
        """``pend`` each, in order."""
        if len(self.ended) + len(items) <= self.max_pending:
            self.ended += items
        else:
            for item in items:
                self.pend(item)

    def forget(self, uids: Iterable[int]) -> None:
        """These open lives ended: they leave as ended lives, not as changes."""
        deque(map(self.changed.pop, uids, repeat(None)), maxlen=0)

    def _drop(self) -> None:
        dropped = len(self.ended) // 4 or 1  # the store has not kept up: the oldest quarter goes
        del self.ended[:dropped]
        self.dropped += dropped

    def pending(self) -> int:
        return len(self.ended)

    def hand_over(self, born_before_ns: int | None, limit: int | None) -> tuple[list, list]:
        """What a drain takes (the caller holds the tracker's lock): ended items (the
        oldest first, at most ``limit``) and open sockets (born before ``born_before_ns``,
        up to the rest of ``limit``); the rest waits for the next drain."""
        ended = self.ended
        if limit is not None and len(ended) > limit:
            ended, self.ended = ended[:limit], ended[limit:]
        else:
            self.ended = []
        room = None if limit is None else limit - len(ended)
        changed, self.changed = self.changed, {}
        if born_before_ns is None and room is None:
            return ended, list(changed.values())
        take = []
        for uid, e in changed.items():
            if (born_before_ns is not None and e.first_ns >= born_before_ns) or \
                    (room is not None and len(take) >= room):
                self.changed[uid] = e
            else:
                take.append(e)
        return ended, take

    @staticmethod
    def expand(ended: list, open_lives: list) -> list[RawLife]:
        """The hand-over as RawLife tuples (outside the lock): open lives as they are
        now, then the ended ones."""
        out = [e.raw_life() for e in open_lives if e.uid]
        out += [unpack_ended(item) if type(item) is bytes else record_life(*item) for item in ended]
        return out
