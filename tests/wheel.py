"""The project's wheel, built as a release would be: shared by tests/unit/test_packaging.py
(what it holds) and tests/live/test_bench.py (what runs from it once installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the build reads: the metadata, the readme it names, and the two folders that install.
SOURCES = ("pyproject.toml", "README.md", "bpf", "tracer")


def build_wheel(into: Path) -> Path:
    """Builds the wheel from a clean copy of the checkout, offline, and returns its path.
    A copy, because a build in the checkout reuses its build/ folder, which can still hold
    files deleted from the source since and would pack them."""
    src = into / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = into / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(dist), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wheels = list(dist.glob("tcpstate_tracer-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
