"""Replays a recording (JSON lines, as ``watch --record`` writes them) as an event source."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tracer.core.record import Event, from_json
from tracer.sources import CountKey


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


class ReplaySource:
    """Hands out a recording in batches and counts it as the kernel program would."""

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

    def read(self, timeout_s: float = 0.0) -> list[Event] | None:
        """The next batch; a bad line is raised only after the events before it were handed out."""
        if self._error is not None:
            raise self._error
        batch: list[Event] = []
        try:
            for ev in self._events:
                self._counts[(ev[7], ev[9], ev[10], ev[11])] += 1
                batch.append(ev)
                if len(batch) >= self._batch_size:
                    break
        except ReplayError as exc:
            self._error = exc  # every later read says so too: a broken file never looks finished
            if not batch:
                raise
        if not batch:
            self._file.close()  # exhausted
            return None
        return batch

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
