"""bpf/tcpstates.h and tracer/core/record.py describe one record; its JSON form round-trips."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tracer.core import calls, record
from tracer.core.states import EventKind, Role, TcpState

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "bpf" / "tcpstates.h"


def header_fields(struct_name: str = "tcpstate_event") -> list[str]:
    """Field names of a struct of the header, in order, read from the header itself."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    body = re.search(r"struct\s+" + struct_name + r"\s*\{(.*?)\}\s*;", text, re.S)
    assert body, f"no struct {struct_name} in {HEADER}"
    names = []
    for decl in body.group(1).split(";"):
        if not decl.strip():
            continue
        m = re.fullmatch(r"\s*[\w\s]+?\b(\w+)\s*(\[[^\]]*\])?\s*", decl)
        assert m, f"cannot read the declaration {decl.strip()!r} in {HEADER}"
        names.append(m.group(1))
    return names


def compile_layout(tmp: Path, struct_name: str) -> dict[str, tuple[int, int]]:
    """{field: (offset, size)} plus "sizeof" as the compiler lays out the header's struct."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check bpf/tcpstates.h (Debian: gcc libc6-dev)")
    names = header_fields(struct_name)
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        '#include "bpf/tcpstates.h"',
        "int main(void) {",
        f'    printf("sizeof %zu %zu\\n", (size_t)0, sizeof(struct {struct_name}));',
    ]
    for name in names:
        lines.append(
            f'    printf("{name} %zu %zu\\n", offsetof(struct {struct_name}, {name}), '
            f"sizeof(((struct {struct_name} *)0)->{name}));"
        )
    lines += ["    return 0;", "}"]
    src = tmp / "layout.c"
    exe = tmp / "layout"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-Werror", "-I", str(ROOT), "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout = {}
    for line in out.splitlines():
        name, offset, size = line.split()
        layout[name] = (int(offset), int(size))
    return layout


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    return compile_layout(tmp_path_factory.mktemp("layout"), "tcpstate_event")


@pytest.fixture(scope="module")
def call_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    return compile_layout(tmp_path_factory.mktemp("call_layout"), "tcpstate_call")


def test_header_and_mirror_name_the_same_fields_in_the_same_order():
    assert header_fields() == list(record.RECORD_NAMES)
    assert record.RECORD_NAMES[:len(record.NAMES)] == record.NAMES


def test_field_offsets_and_sizes_agree(c_layout):
    for i, (name, code) in enumerate(record.RECORD_FIELDS):
        prefix = "<" + "".join(c for _, c in record.RECORD_FIELDS[:i])
        assert (name, struct.calcsize(prefix), struct.calcsize("<" + code)) == (name, *c_layout[name])


def test_the_numpy_mirror_has_the_header_s_offsets_and_sizes(c_layout):
    dtype = record.numpy_dtype()
    assert dtype.itemsize == c_layout["sizeof"][1]
    for name in record.RECORD_NAMES:
        field, offset = dtype.fields[name][:2]
        assert (name, offset, field.itemsize) == (name, *c_layout[name])


@pytest.mark.parametrize(("header", "stride"), [(0, record.RECORD_SIZE), (8, 152)])
def test_a_batch_reads_the_same_records_as_struct_in_place(event, header, stride):
    """As the ring buffer holds them (an 8-byte header, padding to 8) or packed."""
    records = [record.unpack(record.pack(_life(event, n, sk=0x40 + n))) for n in range(1, 6)]
    pad = bytes(stride - header - record.RECORD_SIZE)
    data = b"".join(bytes(header) + record.pack(_life(event, n, sk=0x40 + n)) + pad for n in range(1, 6))
    batch = record.RecordBatch(data, header, stride)
    assert list(batch) == records and batch[-1] == records[-1] and len(batch) == 5
    assert batch.array["skaddr"].tolist() == [r[record.Field.SK] for r in records]
    assert batch.array["more"].tolist() == [r[record.MORE_AT] for r in records]
    assert [bytes(m) for m in batch.array["more_state"]] == [r[record.MORE_STATE_AT] for r in records]
    assert batch.array["saddr"].tolist() == [r[record.Field.SADDR] for r in records]
    assert record.RecordBatch.of(records).array.tobytes() == b"".join(record.pack(_life(event, n, sk=0x40 + n))
                                                                       for n in range(1, 6))


def test_record_size_agrees(c_layout):
    assert c_layout["sizeof"][1] == record.RECORD_SIZE == struct.calcsize(record.RECORD_FORMAT)


def test_more_matches_the_header():
    text = HEADER.read_text()
    assert re.search(r"#define TCPSTATE_MORE\s+(\d+)", text).group(1) == str(record.MORE)


def _life(event, n: int = 5, sk: int = 0x40):
    """An active opener's life: SYN_SENT (unbound) ... CLOSE, a reset on the way when asked."""
    path = [(TcpState.CLOSE, TcpState.SYN_SENT), (TcpState.SYN_SENT, TcpState.ESTABLISHED),
            (TcpState.ESTABLISHED, TcpState.FIN_WAIT1), (TcpState.FIN_WAIT1, TcpState.FIN_WAIT2),
            (TcpState.FIN_WAIT2, TcpState.CLOSE)][:n]
    return [event(sk, old, new, ts_ns=1000 * (i + 1), sport=40000, dport=20001, service_port=20001,
                  role=Role.ACTIVE, pid=7, comm=b"client") for i, (old, new) in enumerate(path)]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_packed_life_gives_back_its_events(event, n):
    evs = _life(event, n)
    rec = record.unpack(record.pack(evs))
    assert rec[record.MORE_AT] == n - 1
    assert record.events_of(rec) == evs


def test_a_reset_in_a_life_keeps_the_state_and_reports_its_own(event):
    evs = _life(event, 3)
    evs.append(event(0x40, 0, 0, kind=EventKind.RESET_RX, ts_ns=3500, sport=40000, dport=20001,
                     service_port=20001, role=Role.ACTIVE, pid=7, comm=b"client"))
    evs.append(event(0x40, TcpState.FIN_WAIT1, TcpState.CLOSE, ts_ns=3600, sport=40000, dport=20001,
                     service_port=20001, role=Role.ACTIVE, pid=7, comm=b"client"))
    assert record.events_of(record.unpack(record.pack(evs))) == evs


def test_a_record_holds_at_most_one_plus_more_events(event):
    evs = _life(event, 5) * 2
    with pytest.raises(ValueError, match="1 to 8"):
        record.pack(evs[:record.MORE + 2])


def test_field_indexes_match_field_order():
    positions = {
        "ts_ns": record.Field.TS, "skaddr": record.Field.SK, "saddr": record.Field.SADDR,
        "daddr": record.Field.DADDR, "pid": record.Field.PID, "sport": record.Field.SPORT,
        "dport": record.Field.DPORT, "service_port": record.Field.SERVICE_PORT,
        "family": record.Field.FAMILY, "kind": record.Field.KIND, "oldstate": record.Field.OLD,
        "newstate": record.Field.NEW, "role": record.Field.ROLE, "flags": record.Field.FLAGS,
        "comm": record.Field.COMM,
    }
    assert {name: record.NAMES.index(name) for name in positions} == positions


def _raw(family: int, text: str) -> bytes:
    raw = socket.inet_pton(family, text)
    return raw.ljust(16, b"\0")


ROUND_TRIP = [
    pytest.param(record.AF_INET, _raw(socket.AF_INET, "127.0.0.1"), _raw(socket.AF_INET, "10.1.2.3"),
                 id="ipv4"),
    pytest.param(record.AF_INET6, _raw(socket.AF_INET6, "::1"), _raw(socket.AF_INET6, "fe80::1:2"),
                 id="ipv6"),
    pytest.param(record.AF_INET6, _raw(socket.AF_INET6, "2001:db8::ffff:1.2.3.4"),
                 _raw(socket.AF_INET6, "::1.2.3.4"), id="ipv6-not-mapped"),
]


@pytest.mark.parametrize("family, saddr, daddr", ROUND_TRIP)
def test_json_round_trip(event, family, saddr, daddr):
    ev = event(0xFFFF88800041CA00, TcpState.FIN_WAIT1, TcpState.FIN_WAIT2, ts_ns=123456789012,
               sport=37176, dport=20001, service_port=20001, role=Role.ACTIVE, family=family,
               saddr=saddr, daddr=daddr, pid=2687, comm=b"python3", flags=1)
    text = json.dumps(record.to_json(ev))
    assert record.from_json(json.loads(text)) == ev


def test_json_form_is_readable(event):
    ev = event(0xFFFF88800041CA00, TcpState.CLOSE, TcpState.LISTEN, ts_ns=5, sport=20001,
               service_port=20001, role=Role.LISTENER, daddr=bytes(16), pid=2687, comm=b"python3")
    assert record.to_json(ev) == {
        "ts_ns": 5, "sk": "0xffff88800041ca00", "kind": "state", "family": "ipv4",
        "saddr": "127.0.0.1", "sport": 20001, "daddr": "0.0.0.0", "dport": 0,
        "service_port": 20001, "role": "listener", "oldstate": "CLOSE", "newstate": "LISTEN",
        "flags": 0, "pid": 2687, "comm": "python3",
    }


def test_reset_without_states_round_trips(event):
    ev = event(0x10, 0, 0, kind=EventKind.RESET_RX, sport=20001, dport=37176, service_port=20001,
               role=Role.PASSIVE)
    obj = record.to_json(ev)
    assert (obj["kind"], obj["oldstate"], obj["newstate"]) == ("reset_rx", None, None)
    assert record.from_json(obj) == ev


def _obj(**changes):
    obj = {
        "ts_ns": 1000, "sk": "0xffff888000d39280", "kind": "state", "saddr": "127.0.0.1",
        "sport": 37176, "daddr": "127.0.0.1", "dport": 20001, "service_port": 20001,
        "role": "active", "oldstate": "SYN_SENT", "newstate": "ESTABLISHED", "flags": 0,
        "pid": 2687, "comm": "python3",
    }
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return obj


def test_ipv4_mapped_ipv6_becomes_ipv4_like_the_kernel_program():
    ev = record.from_json(_obj(saddr="::ffff:127.0.0.1", daddr="::ffff:10.0.0.2"))
    assert ev[record.Field.FAMILY] == socket.AF_INET
    assert ev[record.Field.SADDR] == bytes([127, 0, 0, 1]) + bytes(12)
    assert ev[record.Field.DADDR] == bytes([10, 0, 0, 2]) + bytes(12)
    back = record.to_json(ev)
    assert (back["family"], back["saddr"], back["daddr"]) == ("ipv4", "127.0.0.1", "10.0.0.2")


def test_valid_object_decodes():
    ev = record.from_json(_obj())
    assert ev[record.Field.SK] == 0xFFFF888000D39280
    assert (ev[record.Field.OLD], ev[record.Field.NEW]) == (TcpState.SYN_SENT, TcpState.ESTABLISHED)
    assert ev[record.Field.ROLE] == Role.ACTIVE


BAD = [
    pytest.param(_obj(ts_ns=...), "ts_ns", id="missing-ts_ns"),
    pytest.param(_obj(ts_ns=-1), "ts_ns", id="negative-ts_ns"),
    pytest.param(_obj(ts_ns="1000"), "ts_ns", id="string-ts_ns"),
    pytest.param(_obj(newstate="FIN_WAIT3"), "newstate", id="bad-newstate"),
    pytest.param(_obj(oldstate="SYN-SENT-ISH"), "oldstate", id="bad-oldstate"),
    pytest.param(_obj(oldstate=2), "oldstate", id="numeric-oldstate"),
    pytest.param(_obj(dport=70000), "dport", id="port-70000"),
    pytest.param(_obj(sport=-1), "sport", id="negative-port"),
    pytest.param(_obj(service_port=True), "service_port", id="bool-port"),
    pytest.param(_obj(sk="0xzz"), "sk", id="sk-not-hex"),
    pytest.param(_obj(sk=12345), "sk", id="sk-not-string"),
    pytest.param(_obj(sk=...), "sk", id="missing-sk"),
    pytest.param(_obj(sk="-0x1"), "sk", id="sk-negative"),
    pytest.param(_obj(kind="fin"), "kind", id="bad-kind"),
    pytest.param(_obj(role="client"), "role", id="bad-role"),
    pytest.param(_obj(saddr="127.0.0.300"), "saddr", id="bad-saddr"),
    pytest.param(_obj(sk="0x1" + "0" * 16), "sk", id="sk-over-64-bits"),
    pytest.param(_obj(daddr="::1"), "daddr", id="mixed-families"),
    pytest.param(_obj(comm=7), "comm", id="comm-not-string"),
    pytest.param(_obj(flags=256), "flags", id="flags-too-big"),
    pytest.param(["ts_ns", 1], "object", id="list"),
    pytest.param(None, "object", id="null"),
    pytest.param("event", "object", id="string"),
]


@pytest.mark.parametrize("obj, named", BAD)
def test_from_json_rejects_bad_input_naming_the_field(obj, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        record.from_json(obj)


def test_the_call_record_mirror_has_the_header_s_fields_offsets_and_size(call_layout):
    assert header_fields("tcpstate_call") == list(calls.CALL_NAMES)
    for i, (name, code) in enumerate(calls.CALL_FIELDS):
        prefix = "<" + "".join(c for _, c in calls.CALL_FIELDS[:i])
        assert (name, struct.calcsize(prefix), struct.calcsize("<" + code)) == (name, *call_layout[name])
    assert call_layout["sizeof"][1] == calls.CALL_SIZE


@pytest.mark.parametrize(("family", "addr"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::"),
                                              (socket.AF_INET6, "fe80::1")])
def test_a_call_record_round_trips(family, addr):
    c = calls.Call(123, 40, 41, 98, 3, family, addr, 8080, "bind", True, False, "server")
    assert calls.decode(calls.pack(c)) == c
