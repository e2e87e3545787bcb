"""Replays a recording (JSON lines, as ``watch --record`` writes them) as an event source.

A recording holds events one by one; the kernel sends records, a young socket's
whole life in one (bpf/tcpstates.bpf.c). ``ReplaySource.read_records`` assembles
the events into the records the program would have sent for them, so a replay
goes through the path the daemon runs (Tracker.apply_records) and prints what
`watch` printed.

The one difference from the kernel: the program's lives that stay open are taken
by user space once they are 0.3 s old (BccSource.sweep); a replay takes the lives
still open at the end of each batch instead, as they are. A batch is a stretch of
the recording in time order (it ends where the recording's time goes back, which
is where the recording `watch` read a new batch, or after ``batch_size`` events),
so each batch printed in time order is the recording in its own order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tracer.core import record
from tracer.core.record import Event, Field, Record, from_json
from tracer.core.states import EventKind, TcpState
from tracer.sources import CountKey

_STATE = EventKind.STATE.value
_CLOSE = TcpState.CLOSE.value
_LISTEN = TcpState.LISTEN.value
# A socket seen opening starts a life (bpf/tcpstates.bpf.c, the tracepoint's `born`).
_BIRTHS = frozenset({(TcpState.CLOSE.value, TcpState.SYN_SENT.value),
                     (TcpState.LISTEN.value, TcpState.SYN_RECV.value)})


class ReplayError(ValueError):
    """A line of the recording cannot be decoded; carries the file and line."""


def read_events(stream: IO[str], name: str = "<stream>") -> Iterator[Event]:
    """Events of a recording in order. Lines whose object has a "meta" key describe the
    recording (how, where, when it was made) and are skipped; blank lines too."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{name}:{lineno}: not JSON ({exc.msg})") from None
        if isinstance(obj, dict) and "meta" in obj:
            continue
        try:
            yield from_json(obj)
        except ValueError as exc:
            raise ReplayError(f"{name}:{lineno}: {exc}") from None


class LifeAssembler:
    """Events in, the kernel program's records out, in the order it sends them.

    As bpf/tcpstates.bpf.c does: a socket born (CLOSE -> SYN_SENT, LISTEN -> SYN_RECV,
    or into LISTEN) starts a life; its later transitions and resets are appended, up
    to record.MORE of them; a CLOSE sends the life, and so does a birth at the address
    of a life still open (whose end the program never saw). A full life is sent as it
    is, and the transition that did not fit goes on its own, as every transition of a
    socket without a life does. (The map of lives is never full here.)
    """

    def __init__(self) -> None:
        self._lives: dict[int, list[Event]] = {}  # by socket, oldest birth first

    def add(self, ev: Event) -> list[Record]:
        """The records the program sends at this event (often none)."""
        sk, kind, new = ev[Field.SK], ev[Field.KIND], ev[Field.NEW]
        lives = self._lives
        if kind == _STATE and ((ev[Field.OLD], new) in _BIRTHS or new == _LISTEN):
            stale = lives.pop(sk, None)
            lives[sk] = [ev]
            return [] if stale is None else [_record(stale)]
        life = lives.get(sk)
        if life is None:
            return [_record([ev])]
        if len(life) == 1 + record.MORE:
            del lives[sk]
            return [_record(life), _record([ev])]
        life.append(ev)
        if kind == _STATE and new == _CLOSE:
            del lives[sk]
            return [_record(life)]
        return []

    def take_all(self) -> list[Record]:
        """Every life still open, as it is (the kernel's sweep would take them)."""
        taken = [_record(life) for life in self._lives.values()]
        self._lives.clear()
        return taken

    def __len__(self) -> int:
        return len(self._lives)


def _record(events: list[Event]) -> Record:
    return record.unpack(record.pack(events))


class ReplaySource:
    """Hands out a recording as the kernel's records, in batches, and counts it as the
    kernel program would. ``read`` gives the recorded events as they are instead, for
    tools and tests that look at events; a source is read one way or the other."""

    bcc_version = "none"  # KernelCounters: a recording is replayed without BCC

    def __init__(self, path: Path | str, batch_size: int = 4096) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, encoding="utf-8")
        except OSError as exc:
            raise ReplayError(f"cannot open recording {self.path}: {exc.strerror}") from None
        self._events = read_events(self._file, str(self.path))
        self._batch_size = batch_size
        self._counts: Counter[CountKey] = Counter()
        self._error: ReplayError | None = None
        self._lives = LifeAssembler()
        self._held: Event | None = None  # read, and the first of the next batch

    def _next(self) -> Event | None:
        """The next event of the recording, counted; None at its end. A bad line is
        kept and raised by every later read: a broken file never looks finished."""
        if self._error is not None:
            raise self._error
        try:
            ev = next(self._events)
        except StopIteration:
            return None
        except ReplayError as exc:
            self._error = exc
            raise
        self._counts[(ev[Field.SERVICE_PORT], ev[Field.KIND], ev[Field.OLD], ev[Field.NEW])] += 1
        return ev

    def read_records(self, timeout_s: float = 0.0) -> list[Record] | None:
        """The records the program would have sent for the next stretch of the
        recording, the lives still open at its end included; None once the recording
        is exhausted. A bad line is raised only after the records of the events
        before it were handed out."""
        batch: list[Record] = []
        last_ts, events = -1, 0
        try:
            while events < self._batch_size:
                ev, self._held = self._held, None
                if ev is None and (ev := self._next()) is None:
                    break
                if ev[Field.TS] < last_ts:  # the recorder read a new batch here
                    self._held = ev
                    break
                last_ts = ev[Field.TS]
                events += 1
                batch += self._lives.add(ev)
        except ReplayError:
            if not batch and not len(self._lives):
                raise
        batch += self._lives.take_all()
        if not batch:
            self._file.close()  # exhausted
            return None
        return batch

    def read(self, timeout_s: float = 0.0) -> list[Event] | None:
        """The next recorded events as they are; a bad line is raised only after the
        events before it were handed out."""
        batch: list[Event] = []
        try:
            while len(batch) < self._batch_size and (ev := self._next()) is not None:
                batch.append(ev)
        except ReplayError:
            if not batch:
                raise
        if not batch:
            self._file.close()  # exhausted
            return None
        return batch

    def sweep(self) -> list[Record]:
        """Nothing: read_records hands out the lives open at the end of each batch."""
        return []

    def backlog(self) -> float:
        """A recording waits on disk, never in a buffer that could overflow."""
        return 0.0

    def seed_listeners(self, listeners: dict[int, tuple[int, str]]) -> None:
        """Nothing to tell: the recording already holds each socket's role."""

    def transition_counts(self) -> dict[CountKey, int]:
        return dict(self._counts)

    def lost(self) -> dict[str, int]:
        return {}

    def kernel_stats(self) -> None:
        """KernelCounters: no program runs, so it has no maps or statistics."""
        return None

    def decode_errors(self) -> int:
        return 0  # a bad line stops the replay instead (ReplayError)

    def close(self) -> None:
        self._file.close()


def recording_meta(path: Path | str) -> dict:
    """The recording's description (its first line, when that is a "meta" object), or {}."""
    try:
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        return {}
                    meta = obj.get("meta") if isinstance(obj, dict) else None
                    return meta if isinstance(meta, dict) else {}
    except OSError as exc:
        raise ReplayError(f"cannot open recording {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ReplayError(f"{path}: not a text recording (JSON lines expected)") from None
    return {}
