"""`tcpstate-tracer watch` as a subprocess the test can read while traffic runs."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.live.conftest import ROOT, tracer_cmd


class Watch:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(tracer_cmd("watch", *args), cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        banner = self.proc.stderr.readline()  # printed once the program is attached
        if "watching" not in banner:
            self.proc.kill()
            raise AssertionError(f"watch did not start: {banner}{self.proc.stderr.read()}")
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines):
                return
            time.sleep(0.05)
        raise AssertionError(f"watch output never matched; {len(self.lines)} lines:\n" + "".join(self.lines[-40:]))

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self._reader.join(5)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, err

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


def transitions(events: list[dict], role: str) -> list[str]:
    return [f"{e['oldstate']}->{e['newstate']}" for e in events if e["role"] == role and e["kind"] == "state"]


def last_line_is_listener_close(port: int):
    def check(lines: list[str]) -> bool:
        return any('"LISTEN"' in l and '"CLOSE"' in l and '"listener"' in l for l in lines[-3:])
    return check


__all__ = ["Watch", "transitions", "last_line_is_listener_close", "Path"]
