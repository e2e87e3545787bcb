"""--run-as: once the program is loaded the daemon runs as an unprivileged user with
no capabilities (read from /proc), events keep flowing into /metrics and the
timeline, and other namespaces' socket tables are still read, by the helper that
keeps only CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE and CAP_SYS_ADMIN."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from tests.live import traffic
from tests.live.conftest import http_get, start_daemon, stop_daemon
from tests.live.netns import TestHost
from tests.live.observe import transitions_during
from tracer.bench.tracers import scrape, sum_samples
from tracer.host.helper import KEPT
from tracer.host.privileges import capabilities


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def test_run_as_drops_every_capability_and_events_keep_flowing(live_host):
    # The database where the user can reach it (pytest's own directories are root's, 0700).
    workdir = Path(tempfile.mkdtemp(prefix="tcpstate-run-as-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    port = traffic.quiet_port()
    with TestHost("runas") as other:
        other.exec(["ip", "link", "set", "lo", "up"])
        held = other.popen(["python3", "-c", "import socket,time; s=socket.socket(); "
                            "s.bind(('127.0.0.1', 7070)); s.listen(); time.sleep(60)"])
        d = start_daemon(workdir, "--run-as", "nobody", "--timewait-reconcile-seconds", "1",
                         "--db", str(workdir / "db" / "timeline.db"))
        try:
            assert _status(d.proc.pid, "Uid").split()[:2] == ["65534", "65534"]
            caps = capabilities(str(d.proc.pid))
            assert caps["CapEff"] == caps["CapPrm"] == 0, caps
            helpers = [int(c) for c in Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()]
            assert len(helpers) == 1, helpers
            helper = capabilities(str(helpers[0]))
            assert helper["CapEff"] == helper["CapPrm"] == helper["CapBnd"] == sum(1 << c for c in KEPT), helper

            counted = transitions_during(d.url, port, lambda: traffic.client_closed(port, 20), 202)
            # 20 connections (10 transitions each) and the listener's 2, all counted after the drop.
            assert counted == 202, counted
            # And written to the timeline by the user it now is.
            deadline = time.monotonic() + 10
            while True:
                _, body = http_get(f"{d.url}/api/v1/sockets?port={port}&limit=1000")
                stored = [s for s in json.loads(body)["sockets"] if s["role"] != "listener"]
                if len(stored) >= 40 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(stored) == 40
            # The other namespace's table is read through the helper: its listener, found
            # there at the start, is in the timeline with its namespace, and after the
            # reads since (every second) none failed.
            _, body = http_get(f"{d.url}/api/v1/sockets?port=7070&state=LISTEN")
            assert any(s["netns"] == other.netns_inode for s in json.loads(body)["sockets"]), body
            time.sleep(2.5)
            assert sum_samples(scrape(d.url), "tcpstate_kernel_table_read_failures_total") == 0, \
                re.findall(r"kernel socket table: .*", d.log.read_text())
        finally:
            held.kill()
            held.wait()
            assert stop_daemon(d) == 0, d.log.read_text()
    assert "running as nobody (uid 65534): no capabilities left" in d.log.read_text()
    shutil.rmtree(workdir)


def test_an_unknown_or_root_user_stops_the_start_with_one_line(live_host, tmp_path):
    import subprocess

    from tests.live.conftest import ROOT, tracer_cmd

    for user, expected in (("no-such-user-here", "no such user"), ("root", "that is root")):
        done = subprocess.run(tracer_cmd("run", "--run-as", user, "--web.listen-address", "127.0.0.1:1",
                                         "--db", str(tmp_path / "t.db")),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr
