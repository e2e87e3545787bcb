"""Live tests: the real kernel, real sockets on loopback, the real daemon.

They need root and BCC. Off CI a host that cannot run them skips them; with
CI=true they fail instead, because a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> None:
    if CI:
        pytest.fail(f"live test cannot run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/live/" in str(item.fspath):
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session")
def live_host() -> None:
    """Root, the bcc module and the tracepoint, or the live tests cannot run."""
    if os.geteuid() != 0:
        cannot_run("live tests need root (sudo make test)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        cannot_run("the bcc module (Debian python3-bpfcc) is not importable: run make setup")
    from tracer.host import tracefs

    root = tracefs.ensure()
    missing = tracefs.missing_tracepoints(root)
    if missing:
        cannot_run(f"tracepoints missing: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracer", *args]


def http_get(url: str, timeout: float = 5.0, context: Any = None, headers: dict | None = None) -> tuple[int, str]:
    """GET; ``context`` an ssl.SSLContext for https, ``headers`` extra request headers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout,
                                    context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Daemon:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return body


def start_daemon(tmp: Path, *flags: str, ready_timeout: float = 20.0, scheme: str = "http",
                 context: Any = None) -> Daemon:
    """A daemon on a free port. Unless a test sets --max-ports, every port gets a label:
    earlier tests leave TIME_WAIT on many ports, which would use up the default cap.
    ``scheme`` https, with ``context``, for a daemon given a web config with TLS (its
    /readyz open to probes)."""
    if "--max-ports" not in flags:
        flags += ("--max-ports", "65535")
    if "--db" not in flags:
        flags += ("--db", str(tmp / "timeline.db"))
    url = f"{scheme}://127.0.0.1:{free_port()}"
    log = tmp / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(tracer_cmd("run", "--web.listen-address", url.split("://")[1], *flags),
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if http_get(url + "/readyz", timeout=1, context=context)[0] == 200:
                return Daemon(proc, url, log)
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"daemon not ready within {ready_timeout} s:\n{log.read_text()}")


def stop_daemon(daemon: Daemon) -> int:
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        return daemon.proc.wait(15)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        raise


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium (tests/live/browser.py), one for a module's page tests."""
    from tests.live.browser import chromium

    with chromium(tmp_path_factory.mktemp("chromium"), width=1600, height=1250) as d:
        yield d


@pytest.fixture(scope="module")
def daemon(live_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--timewait-reconcile-seconds", "1")
    yield d
    code = stop_daemon(d)
    assert code == 0, f"daemon exited with {code}:\n{d.log.read_text()}"
