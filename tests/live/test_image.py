"""The container image, run as the DaemonSet runs it: its capabilities and no others, a
read-only root, the host's network and PID namespaces, the host paths it mounts, and
--run-as nobody. It must load the program and count loopback connections in /metrics.

`make image` builds it first, with the podman settings the Makefile uses (about a minute
with the base already built, seconds when nothing changed, two more for a first base)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.live import traffic
from tests.live.conftest import ROOT, cannot_run, free_port, http_get
from tests.live.observe import transitions_during
from tracer.host import headers
from tracer.host.privileges import capabilities



def _daemonset() -> tuple[str, tuple[str, ...]]:
    """deploy/kubernetes/daemonset.yaml's container: the capabilities it adds (it drops all
    others), and the host paths it mounts read-only at the same place."""
    manifests = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    pod = next(m for m in manifests if m["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    caps = container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    paths = tuple(m["mountPath"] for m in container["volumeMounts"]
                  if m.get("readOnly") and host.get(m["name"]) == m["mountPath"])
    return ",".join(caps["add"]), paths


CAPABILITIES, HOST_PATHS = _daemonset()


def _make_variables(*names: str) -> list[str]:
    """Values of the Makefile's variables, so the test runs podman as `make image` does."""
    shown = subprocess.run(["make", "--no-print-directory", "-s", "--eval", "print-%: ; @echo $($*)",
                            *[f"print-{n}" for n in names]], cwd=ROOT, capture_output=True, text=True, check=True)
    return shown.stdout.splitlines()


def _wait_ready(url: str, name: str, podman: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(url + "/readyz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True)
    raise AssertionError(f"the container was not ready within {timeout} s:\n{logs.stdout}{logs.stderr}")


class Container:
    """The image run as the DaemonSet runs it, with the host paths in ``mounts``."""

    def __init__(self, tmp: Path, mounts: tuple[str, ...]) -> None:
        podman_cmd, self.limits, self.image = _make_variables("PODMAN", "PODMAN_LIMITS", "IMAGE")
        self.podman = podman_cmd.split()
        self.name = f"tcpstate-tracer-test-{os.getpid()}-{len(mounts)}"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.tmp, self.mounts = tmp, mounts

    def __enter__(self) -> Container:
        mounts = [a for p in self.mounts if os.path.isdir(p) for a in ("-v", f"{p}:{p}:ro")]
        subprocess.run([*self.podman, "run", "-d", "--name", self.name, *self.limits.split(),
                        "--cap-drop=ALL", f"--cap-add={CAPABILITIES}", "--security-opt", "seccomp=unconfined",
                        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--network", "host",
                        "--pid", "host", *mounts, "--tmpfs", "/var/cache/tcpstate-tracer",
                        "-v", f"{self.tmp}:/var/lib/tcpstate-tracer", self.image,
                        "--web.listen-address", self.url.split("://")[1], "--cache-dir", "/var/cache/tcpstate-tracer",
                        "--db", "/var/lib/tcpstate-tracer/timeline.db", "--run-as", "nobody", "--max-ports", "65535"],
                       check=True, capture_output=True, text=True)
        try:
            _wait_ready(self.url, self.name, self.podman)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self.podman, "rm", "--force", self.name], capture_output=True)

    def logs(self) -> str:
        done = subprocess.run([*self.podman, "logs", self.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def stop(self) -> str:
        """SIGTERM, as the kubelet sends; the exit code."""
        stopped = subprocess.run([*self.podman, "stop", "--time", "20", self.name], capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        return subprocess.run([*self.podman, "inspect", "--format", "{{.State.ExitCode}}", self.name],
                              capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def image(live_host) -> None:
    if shutil.which("make") is None:
        cannot_run("make is missing")
    built = subprocess.run(["make", "--no-print-directory", "image"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]


def test_the_image_loads_the_program_and_counts_connections_with_the_daemonsets_capabilities(image, tmp_path):
    with Container(tmp_path, HOST_PATHS) as c:
        pid = subprocess.run([*c.podman, "inspect", "--format", "{{.State.Pid}}", c.name], capture_output=True,
                             text=True, check=True).stdout.strip()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        assert status["Uid"].split()[:2] == ["65534", "65534"], "it gave up root once the program was loaded"
        assert capabilities(pid)["CapEff"] == 0
        # The host's headers (its /usr/src, mounted over the image's) come first.
        assert "kernel headers: merged" not in c.logs() or " from /usr/src at " in c.logs(), c.logs()

        port = traffic.quiet_port()
        counted = transitions_during(c.url, port, lambda: traffic.client_closed(port, 20), 202)
        # 20 connections of 10 transitions each, and the listener's 2.
        assert counted == 202, counted
        assert c.stop() == "0", "SIGTERM stops it cleanly"


def test_on_a_node_without_headers_the_image_uses_its_own(image, tmp_path):
    """Without the host's /usr/src and /lib/modules the daemon merges the trees the image
    carries (this kernel has no headers and no kheaders of its own), and loads."""
    without_headers = tuple(p for p in HOST_PATHS if p not in ("/usr/src", "/lib/modules"))
    with Container(tmp_path, without_headers) as c:
        if Path("/sys/kernel/kheaders.tar.xz").exists():  # a kernel with its own: BCC needs no tree
            assert "kernel headers: merged" not in c.logs(), c.logs()
        else:
            assert f" from {headers.BUNDLED} at " in c.logs(), c.logs()
        assert http_get(c.url + "/metrics")[0] == 200
        assert c.stop() == "0"
