"""A real Prometheus server for live tests (Debian's prometheus package).

It runs deploy/prometheus/prometheus.yml with only what a test must change: a 1 s
scrape and evaluation interval, the daemon's address as the target, and the rule
files by absolute path. Its own port on 127.0.0.1 and its own data directory, so
a Prometheus already running on the host (Debian's service listens on :9090 and
keeps /var/lib/prometheus) is never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.live.conftest import ROOT, free_port

PROMETHEUS = Path("/usr/bin/prometheus")
DEPLOY = ROOT / "deploy" / "prometheus"


class PrometheusError(AssertionError):
    pass


class Prometheus:
    def __init__(self, proc: subprocess.Popen, url: str, workdir: Path) -> None:
        self.proc = proc
        self.url = url
        self.workdir = workdir

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a /api/v1 answer; raises on anything but success."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"GET {url}: {exc.code} {exc.read().decode(errors='replace')}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body}")
        return body["data"]

    def query(self, promql: str) -> dict[tuple, float]:
        """An instant query: the labels of each series (sorted pairs) -> its value."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}

    def wait(self, promql: str, done: Callable[[dict[tuple, float]], bool], what: str,
             timeout: float = 30.0) -> dict[tuple, float]:
        """Queries until ``done(result)``; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{what}: not within {timeout:g} s; {promql} gave {result}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stops the server and removes its directory (configuration, data, log)."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def scrape_config(target: str, rule_files: list[Path], interval: str = "1s") -> dict:
    """deploy/prometheus/prometheus.yml pointed at ``target`` with a test's interval."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(p) for p in rule_files]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


def start_prometheus(workdir: Path, target: str, rule_files: list[Path],
                     ready_timeout: float = 30.0, config_text: dict | None = None) -> Prometheus:
    """Starts Prometheus scraping ``target`` (host:port) every second and waits for
    /-/ready; or with ``config_text``, a whole configuration instead (files it names
    relative to itself belong in ``workdir``). ``workdir`` becomes the server's and is
    removed by stop()."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(config_text or scrape_config(target, rule_files)))
    url = f"http://127.0.0.1:{free_port()}"
    with open(workdir / "prometheus.log", "w") as out:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={url.removeprefix('http://')}"],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    server = Prometheus(proc, url, workdir)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = server.log()
            server.stop()
            raise PrometheusError(f"prometheus exited with {proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    log = server.log()
    server.stop()
    raise PrometheusError(f"prometheus not ready within {ready_timeout:g} s:\n{log}")
