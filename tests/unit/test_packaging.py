"""What the installed package carries: the BPF programs, the load generator and the
web's files go into the wheel, so `run`, `check` and `bench` work without a checkout."""

from __future__ import annotations

import ast
import tomllib
import zipfile
from pathlib import Path

from setuptools import find_namespace_packages

from tests.wheel import ROOT, build_wheel

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# C that only a BPF program holds: a Python string with one of these is a program
# that should be a file in bpf/.
BPF_MARKERS = ("TRACEPOINT_PROBE", "BPF_HASH", "BPF_ARRAY", "BPF_RINGBUF_OUTPUT", "BPF_PERF_OUTPUT")


def test_the_wheel_holds_the_programs_the_load_generator_and_the_web_files(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    programs = sorted(p.name for p in (ROOT / "bpf").iterdir() if p.suffix in (".c", ".h"))
    assert {"tcpstates.bpf.c", "tcpstates.h", "blindspots.bpf.c"} <= set(programs)
    web = sorted(str(p.relative_to(ROOT)) for d in ("static", "templates")
                 for p in (ROOT / "tracer" / "web" / d).iterdir() if p.is_file())
    assert web
    wanted = {f"tracer/bpf/{name}" for name in programs} | {"tracer/bench/loadgen.c"} | set(web)
    assert wanted - names == set()
    assert not any(name.startswith("bpf/") for name in names), "bpf/ must install inside tracer/"


def test_the_package_list_names_every_package_under_tracer() -> None:
    # The list is explicit (bpf/ is mapped to tracer.bpf, which packages.find cannot see);
    # a package added under tracer/ and not listed would be missing from the wheel.
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {p for p in find_namespace_packages(str(ROOT), include=["tracer", "tracer.*"])
               if (ROOT / p.replace(".", "/") / "__init__.py").exists()}
    assert listed == on_disk | {"tracer.bpf"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"tracer.bpf": "bpf"}


def test_the_programs_are_found_where_the_package_is() -> None:
    from tracer.host import blindspots
    from tracer.sources import bcc

    assert bcc.PROGRAM.is_file() and (bcc.BPF_DIR / "tcpstates.h").is_file()
    assert blindspots.PROGRAM.is_file() and blindspots.PROGRAM.parent == bcc.BPF_DIR


def test_no_bpf_program_is_a_string_in_python() -> None:
    found = []
    for path in (ROOT / "tracer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(marker + "(" in node.value for marker in BPF_MARKERS):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], "BPF C belongs in bpf/*.bpf.c, loaded by path"
