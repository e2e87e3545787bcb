"""tracer/core/ stays pure: importing it pulls in no bcc, flask or prometheus_client."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import tracer.core

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("bcc", "flask", "prometheus_client")

CORE_MODULES = sorted(
    f"tracer.core.{m.name}" for m in pkgutil.iter_modules(tracer.core.__path__)
)

PROBE = f"""
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})))
"""


def imported_after(modules: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_core_has_the_modules_this_test_expects():
    assert {"tracer.core.states", "tracer.core.record", "tracer.core.tracker",
            "tracer.core.clock"} <= set(CORE_MODULES)


def test_importing_the_core_pulls_in_no_adapter_library():
    assert imported_after(CORE_MODULES) == []


def test_the_probe_would_notice_a_forbidden_import():
    # The subprocess sees the same libraries as the daemon would; prove the check can fail.
    assert imported_after(["flask"]) != []
