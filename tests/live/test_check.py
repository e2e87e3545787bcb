"""`tcpstate-tracer check` on the real host: all green here, and the right problem named where it cannot run.

The failing hosts are made for real rather than mocked: a process stripped of its
capabilities (setpriv), a Python that cannot import bcc, a mount namespace without
tracefs. With CI=true a test that cannot set its host up fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.host import headers
from tracer.host.preflight import run_checks

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
NAMES = ["privileges", "bcc", "tracefs", "tracepoints", "headers", "program"]

# What `tcpstate-tracer check` does, printed as JSON lines so the test can read every result.
CHECK = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from tracer.host.preflight import run_checks
results = run_checks(Path(sys.argv[1]), load_program=sys.argv[2] == "load")
for r in results:
    print(json.dumps(asdict(r)))
sys.exit(0 if all(r.ok for r in results) else 1)
"""

# Only the program load, as root whose capabilities were taken away.
LOAD_ONLY = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from tracer.host import headers, preflight
headers.prepare(Path(sys.argv[1]))
print(json.dumps(asdict(preflight.check_program())))
"""


def _cannot_run(reason: str) -> None:
    """As tests/live/conftest.py's cannot_run: skip here, fail on CI where a skip would hide a broken setup."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"live test cannot run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _host(live_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root, bcc and the tracepoints (live_host); BCC_KERNEL_SOURCE, which run_checks sets, restored after."""
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _cannot_run(f"{name} is not installed (Debian package util-linux)")
    return path


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, list[dict[str, object]], str]:
    """Runs a check script; returns its exit code, its results by order, and its stderr."""
    proc = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [json.loads(line) for line in lines]
    assert results, f"the check printed no results (exit {proc.returncode}); stderr:\n{proc.stderr}"
    return proc.returncode, results, proc.stderr


def _by_name(results: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(r["name"]): r for r in results}


def test_all_checks_pass_here_including_a_real_program_load() -> None:
    results = run_checks(headers.DEFAULT_CACHE)
    assert [r.name for r in results] == NAMES
    assert [r for r in results if not r.ok] == []
    program = results[-1].message
    assert program.startswith("compiled, loaded and attached the program") and program.endswith(" s")
    assert float(program.split(" in ")[-1].removesuffix(" s")) < 10


def test_unprivileged_user_is_told_to_run_as_root(tmp_path: Path) -> None:
    setpriv = _tool("setpriv")
    code, results, stderr = _run([setpriv, "--inh-caps=-all", "--bounding-set=-all", "--reuid=65534",
                                  "--regid=65534", "--clear-groups", sys.executable, "-c", CHECK,
                                  str(tmp_path / "cache"), "load"])
    found = _by_name(results)
    assert code == 1, stderr
    assert found["privileges"]["ok"] is False
    assert found["privileges"]["message"] == (
        "uid 65534 lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which loading BPF needs: "
        "run as root (sudo tcpstate-tracer ...)")
    # tracefs is mode 0700: nobody cannot even look, and is told the same remedy.
    assert found["tracefs"]["ok"] is False and "run as root" in str(found["tracefs"]["message"])
    # Independent checks still ran; nothing that needs the failed ones did. The cache is root's
    # (0700 tmp dir), so nobody is told to pick another one.
    assert found["bcc"]["ok"] is True
    assert found["headers"]["ok"] is False and "--cache-dir" in str(found["headers"]["message"])
    assert "tracepoints" not in found and "program" not in found


def test_root_without_capabilities_is_refused_by_the_kernel_and_told_why(tmp_path: Path) -> None:
    """A host where BPF is not allowed: the kernel really refuses the load, and the check says so."""
    setpriv = _tool("setpriv")
    drop = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
    code, results, _ = _run([*drop, sys.executable, "-c", CHECK, str(tmp_path / "cache"), "load"])
    found = _by_name(results)
    assert code == 1
    assert found["privileges"]["ok"] is False
    assert str(found["privileges"]["message"]).startswith("running as root but without CAP_BPF and CAP_PERFMON")
    assert "program" not in found

    _, (program,), stderr = _run([*drop, sys.executable, "-c", LOAD_ONLY, str(tmp_path / "cache")])
    assert program["ok"] is False, stderr
    assert "Operation not permitted" in str(program["message"])
    assert str(program["message"]).endswith(
        "the kernel refused BPF: run as root, check kernel.unprivileged_bpf_disabled / lockdown")


def _python_without_bcc() -> list[str]:
    """The system Python with site-packages off (-S): Debian's bcc lives in dist-packages, so it is gone."""
    argv = [str(SYSTEM_PYTHON), "-S"]
    probe = subprocess.run([*argv, "-c", "import bcc"], capture_output=True, check=False)
    if probe.returncode == 0:
        _cannot_run(f"{' '.join(argv)} can still import bcc, so it cannot stand for a host without it")
    return argv


def test_python_without_bcc_is_told_to_install_python3_bpfcc(tmp_path: Path) -> None:
    code, results, stderr = _run([*_python_without_bcc(), "-c", CHECK, str(tmp_path / "cache"), "load"])
    found = _by_name(results)
    assert code == 1, stderr
    assert found["bcc"] == {
        "name": "bcc", "ok": False,
        "message": "cannot import bcc (No module named 'bcc'): install python3-bpfcc and run from the "
                   "project's venv (make setup)", "warn": False}
    assert all(found[name]["ok"] for name in ("privileges", "tracefs", "tracepoints", "headers"))
    assert "program" not in found


def test_the_unrelated_pypi_bcc_is_recognised(tmp_path: Path) -> None:
    """A module named bcc without BPF, found first on the path, as `pip install bcc` would leave."""
    impostor = tmp_path / "site" / "bcc"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text('"""Not BCC."""\n')
    code, results, stderr = _run([sys.executable, "-c", CHECK, str(tmp_path / "cache"), "load"],
                                 env={"PYTHONPATH": f"{impostor.parent}:{REPO}"})
    found = _by_name(results)
    assert code == 1, stderr
    assert found["bcc"]["ok"] is False
    assert f"the bcc module at {impostor / '__init__.py'} has no BPF class" in str(found["bcc"]["message"])
    assert "pip uninstall bcc" in str(found["bcc"]["message"])
    assert "program" not in found


def test_tracefs_is_mounted_when_missing(tmp_path: Path) -> None:
    """In a private mount namespace without tracefs, the check mounts it and says so; the host is untouched."""
    unshare = _tool("unshare")
    host_had_tracefs = Path("/sys/kernel/tracing/events").is_dir()
    script = ("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
              'grep -q " - tracefs " /proc/self/mountinfo && { echo "tracefs still mounted" >&2; exit 3; }; '
              'exec "$0" "$@"')
    code, results, stderr = _run([unshare, "--mount", "--propagation", "private", "sh", "-c", script,
                                  sys.executable, "-c", CHECK, str(tmp_path / "cache"), "no-load"])
    found = _by_name(results)
    assert code == 0, stderr
    assert found["tracefs"]["message"] == "tracefs was not mounted: mounted it at /sys/kernel/tracing"
    assert found["tracepoints"]["ok"] is True
    assert Path("/sys/kernel/tracing/events").is_dir() == host_had_tracefs, "the host's mounts must not change"


def test_the_command_probes_for_blind_threads_and_still_passes() -> None:
    """`tcpstate-tracer check` as users run it: one line per check, the probe last; a
    blind thread is a warning (the daemon runs, it does not see everything), not a failure."""
    proc = subprocess.run([sys.executable, "-m", "tracer", "check", "--probe-seconds", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == NAMES + ["blindspots"]
    assert all(line.split()[0] == "ok" for line in lines[:-2])
    status, message = lines[-2].split()[0], lines[-2].split(None, 2)[2]
    assert (status, message.startswith("none in 1 s")) in (("ok", True), ("warn", False)), lines[-2]
    assert lines[-1].startswith("this host can run tcpstate-tracer")
