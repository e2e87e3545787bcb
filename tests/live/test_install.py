"""`make install` and `make uninstall` into a scratch root (DESTDIR): the tree an
operator gets, the daemon runnable from its own venv, the installed unit verified by
systemd-analyze, and uninstall keeping the configuration and the timeline unless PURGE=1.
(systemd is not PID 1 on the machines this runs on: enabling is not tried.)"""

from __future__ import annotations

import shutil
import subprocess

from tests.live.conftest import ROOT

PREFIX = "opt/tcpstate-tracer"


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_install_into_a_scratch_root_and_uninstall(live_host, tmp_path):
    root = tmp_path / "root"
    done = _make("install", f"DESTDIR={root}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"installed into {root}; nothing enabled" in done.stdout
    daemon = root / PREFIX / ".venv" / "bin" / "tcpstate-tracer"
    unit = root / "etc/systemd/system/tcpstate-tracer.service"
    config = root / "etc/tcpstate-tracer.yml"
    for path in (daemon, unit, config, root / PREFIX / "README.md"):
        assert path.is_file(), path
    for path in ("var/lib/tcpstate-tracer", "var/cache/tcpstate-tracer"):
        assert (root / path).is_dir(), path
    # A copy of the project, not this checkout: it runs, and imports its package from the venv.
    where = subprocess.run([str(root / PREFIX / ".venv/bin/python"), "-c", "import tracer; print(tracer.__file__)"],
                           capture_output=True, text=True, cwd="/")
    assert where.returncode == 0 and str(root / PREFIX / ".venv") in where.stdout, where.stdout + where.stderr
    checked = subprocess.run([str(daemon), "run", "--check-config", "--config.file", str(config)],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "configuration ok" in checked.stdout, checked.stdout + checked.stderr
    # The installed unit, its daemon's path pointed into the scratch root (verify checks it runs).
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (Debian's systemd package)"
    here = tmp_path / "tcpstate-tracer.service"
    here.write_text(unit.read_text().replace(f"/{PREFIX}/", f"{root}/{PREFIX}/"))
    verified = subprocess.run([analyze, "verify", str(here)], capture_output=True, text=True)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr

    # The operator changed the configuration and the daemon wrote a timeline: a second
    # install keeps the one, uninstall keeps both, PURGE=1 removes them.
    config.write_text(config.read_text() + "msl: 20\n")
    (root / "var/lib/tcpstate-tracer/timeline.db").write_text("")
    again = _make("install", f"DESTDIR={root}")
    assert again.returncode == 0 and "keeping" in again.stdout and config.read_text().endswith("msl: 20\n")
    removed = _make("uninstall", f"DESTDIR={root}")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / PREFIX).exists() and not unit.exists() and not (root / "var/cache/tcpstate-tracer").exists()
    assert config.exists() and (root / "var/lib/tcpstate-tracer/timeline.db").exists()
    purged = _make("uninstall", f"DESTDIR={root}", "PURGE=1")
    assert purged.returncode == 0 and not config.exists() and not (root / "var/lib/tcpstate-tracer").exists()
