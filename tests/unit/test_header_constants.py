"""bpf/tcpstates.h's #define constants and their Python mirrors agree, as its record layout does
(tests/unit/test_record.py).

The header is compiled, so a value written as an expression is checked as the
compiler sees it; and every TCPSTATE_* constant it defines must be checked here, so
a new one cannot be added on the C side alone.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from enum import IntEnum
from pathlib import Path

import pytest

from tracer.core import calls, record, states
from tracer.core.states import EventKind, Role, TcpState
from tracer.sources import bcc

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "bpf" / "tcpstates.h"


def header_names() -> list[str]:
    """The TCPSTATE_* macros the header defines with a value, in order."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    return re.findall(r"^\s*#\s*define\s+(TCPSTATE_\w+)[ \t]+\S", text, flags=re.M)


@pytest.fixture(scope="module")
def defines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """{name: value} of the header's TCPSTATE_* macros, as the compiler evaluates them."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check bpf/tcpstates.h (Debian: gcc libc6-dev)")
    names = header_names()
    assert names, f"no TCPSTATE_* constants in {HEADER}"
    lines = ["#include <stdio.h>", "#include <linux/types.h>", '#include "bpf/tcpstates.h"', "int main(void) {"]
    lines += [f'    printf("{name} %lld\\n", (long long)({name}));' for name in names]
    lines += ["    return 0;", "}"]
    tmp = tmp_path_factory.mktemp("defines")
    src, exe = tmp / "defines.c", tmp / "defines"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-Werror", "-I", str(ROOT), "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def group(defines: dict[str, int], prefix: str) -> dict[str, int]:
    """The constants named prefix + NAME, by NAME."""
    return {name.removeprefix(prefix): v for name, v in defines.items() if name.startswith(prefix)}


def members(enum: type[IntEnum]) -> dict[str, int]:
    return {m.name: m.value for m in enum}


def test_kinds_are_the_event_kinds(defines):
    assert group(defines, "TCPSTATE_KIND_") == members(EventKind)


def test_roles_are_the_roles(defines):
    assert group(defines, "TCPSTATE_ROLE_") == members(Role)


def test_flags_are_the_record_flags(defines):
    flags = {name.removeprefix("F_"): getattr(states, name) for name in dir(states) if name.startswith("F_")}
    assert group(defines, "TCPSTATE_F_") == flags


def test_stat_slots_are_the_live_sources_table(defines):
    slots = group(defines, "TCPSTATE_STAT_")
    assert slots.pop("NSLOTS") == len(bcc.STAT_SLOTS)
    assert slots == {name: i for i, name in enumerate(bcc.STAT_SLOTS)}
    # The constants bcc.py reads the slots with are the table's.
    assert {name: getattr(bcc, f"STAT_{name}") for name in bcc.STAT_SLOTS} == slots


def test_sizes_are_the_records(defines):
    fields = dict(record.RECORD_FIELDS)
    assert defines["TCPSTATE_COMM_LEN"] == struct.calcsize(fields["comm"])
    assert defines["TCPSTATE_MORE"] == record.MORE == struct.calcsize(fields["more_state"])


def test_the_overflow_index_fits_every_kind_and_state(defines):
    # overflow_counts is indexed kind * 256 + oldstate * 16 + newstate, and a life's later
    # transitions are coded kind << 4 | newstate: states must fit in 4 bits.
    assert defines["TCPSTATE_OVERFLOW_SLOTS"] == len(EventKind) * 256
    assert max(TcpState) < 16 and max(EventKind) < 16


def test_calls_and_options_are_the_call_records(defines):
    assert group(defines, "TCPSTATE_CALL_") == {name.upper(): code for code, name in calls.CALL_NAMES_BY_CODE.items()}
    assert group(defines, "TCPSTATE_OPT_") == {"TCP": calls.OPT_TCP, "REUSEADDR": calls.OPT_REUSEADDR,
                                               "REUSEPORT": calls.OPT_REUSEPORT}


def test_every_constant_of_the_header_is_checked(defines):
    checked = ("TCPSTATE_KIND_", "TCPSTATE_ROLE_", "TCPSTATE_F_", "TCPSTATE_STAT_", "TCPSTATE_CALL_",
               "TCPSTATE_OPT_")
    singles = {"TCPSTATE_COMM_LEN", "TCPSTATE_MORE", "TCPSTATE_OVERFLOW_SLOTS"}
    unchecked = {name for name in defines if not name.startswith(checked)} - singles
    assert not unchecked, f"{sorted(unchecked)}: add a check of their Python mirror here"
