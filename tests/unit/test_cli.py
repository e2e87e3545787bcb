"""The command line, as an operator meets it: one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "loopback-3-client-close.jsonl"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, input=stdin)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("tcpstate-tracer: ") for line in lines), result.stderr
    for word in words:
        assert word in result.stderr


def test_replay_prints_every_transition_of_the_recording():
    result = cli("replay", str(FIXTURE))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TIME") and len(lines) == 1 + 32
    assert sum("(TIME_WAIT)" in line for line in lines) == 3


def test_replay_json_lines_can_be_replayed_again(tmp_path):
    first = cli("replay", str(FIXTURE), "--json")
    again = tmp_path / "again.jsonl"
    again.write_text(first.stdout)
    second = cli("replay", str(again), "--json")
    assert [json.loads(l)["newstate"] for l in first.stdout.splitlines()] == \
        [json.loads(l)["newstate"] for l in second.stdout.splitlines()]


def test_bad_line_stops_replay_after_what_came_before(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:6] + ['{"ts_ns": 1, "sk": "zz"}'] + lines[6:]) + "\n")
    result = cli("replay", str(broken))
    assert_one_line_error(result, 1, "broken.jsonl:7", "'sk'")
    assert len(result.stdout.splitlines()) == 1 + 5  # header and the five events before it


@pytest.mark.parametrize("args, code, words", [
    (["replay", "/nonexistent.jsonl"], 1, ["cannot open recording"]),
    (["run", "--msl", "-1", "--web.listen-address", "nope"], 2, ["msl", "web.listen_address"]),
    (["run", "--config.file", "/nonexistent.yml"], 2, ["cannot read it"]),
    (["stuck", "--web.listen-address", "127.0.0.1:1"], 1, ["cannot reach the daemon"]),
    (["conflicts", "--web.listen-address", "127.0.0.1:1"], 1, ["cannot reach the daemon"]),
])
def test_operator_errors_are_one_line(args, code, words):
    assert_one_line_error(cli(*args), code, *words)


def test_check_config_prints_every_problem_at_once(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("msl: -1\nmax_ports: -3\nstuck:\n  thresholds:\n    CLOSE_WAIT: 0\nbogus: 1\n")
    result = cli("run", "--config.file", str(config), "--check-config")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 4, result.stderr


def test_replay_into_a_closed_pipe_is_no_error():
    shell = f"{sys.executable} -m tracer replay {FIXTURE} | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_replay_prints_the_recording_in_its_order_with_the_time_each_state_lasted():
    recorded = [json.loads(l) for l in FIXTURE.read_text().splitlines() if '"meta"' not in l]
    printed = [json.loads(l) for l in cli("replay", str(FIXTURE), "--json").stdout.splitlines()]
    assert [(p["ts_ns"], p["sk"], p["newstate"]) for p in printed] == \
        [(r["ts_ns"], r["sk"], r["newstate"]) for r in recorded]
    entered: dict[str, int] = {}
    for p in printed:
        before = entered.get(p["sk"])
        assert p["prev_state_seconds"] == (None if before is None else (p["ts_ns"] - before) / 1e9)
        entered[p["sk"]] = p["ts_ns"]
    assert [p["sport"] for p in printed if p["timewait"]] == [37176, 37192, 37202]


def test_port_needs_root():
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                             "tracer", "port", "8080"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, 1, "needs root")
