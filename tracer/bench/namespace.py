"""The bench's private network namespace: its TIME_WAITs, ports and counters are its
own, and nothing the load sends leaves the namespace's loopback."""

from __future__ import annotations

import os
import subprocess

from tracer.bench.errors import BenchError


class Namespace:
    """A network namespace with its loopback up; deleted on exit with all it holds."""

    def __init__(self) -> None:
        self.name = f"tst-bench-{os.getpid()}"

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def renew(self) -> None:
        """An empty namespace of the same name: the sockets an earlier run left (its
        TIME_WAITs last a minute, and a full TIME_WAIT table changes what the next
        connections cost the kernel) go with the old one."""
        self.__exit__()
        try:
            self.__enter__()
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"cannot make the bench namespace {self.name} again: "
                             f"{exc.stderr.decode(errors='replace').strip()}") from None

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> str:
        done = subprocess.run(self.cmd(*argv), capture_output=True, text=True)
        if done.returncode:
            raise BenchError(f"{' '.join(argv)} failed in the bench namespace: "
                             f"{(done.stderr or done.stdout).strip()}")
        return done.stdout
