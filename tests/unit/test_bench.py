"""The bench's arithmetic: stored transitions, the transitions each load shape makes,
the table, the targets, its flags."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import bench, cli
from tracer.bench import load, report, tracers
from tracer.bench.runs import Bench, Hold, Run, Soak
from tracer.core.states import Role, TcpState as S
from tracer.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
LOOP = bytes([127, 0, 0, 1]) + bytes(12)
COMM = b"loadgen".ljust(16, b"\0")
SEC = 10**9


def raw(uid, port, role, states, start_ns, end_ns=None):
    history = tuple(x for i, s in enumerate(states) for x in (s.value, start_ns + i * 1000))
    return (uid, 0, 2, LOOP, 40000 + uid, LOOP, port, role.value, port, 7, COMM, history, end_ns, 0, ())


def test_stored_transitions_counts_each_span_and_the_final_close(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db, 86400, 1 << 30)
    offset = 1_700_000_000 * SEC
    client = (S.SYN_SENT, S.ESTABLISHED, S.FIN_WAIT1, S.FIN_WAIT2, S.TIME_WAIT)
    server = (S.SYN_RECV, S.ESTABLISHED, S.CLOSE_WAIT, S.LAST_ACK)
    store.write([
        raw(1, 1024, Role.ACTIVE, client, 10 * SEC),  # in TIME_WAIT: 5
        raw(2, 1024, Role.ACTIVE, client, 10 * SEC, 11 * SEC),  # TIME_WAIT over: 5
        raw(3, 1024, Role.PASSIVE, server, 10 * SEC, 11 * SEC),  # closed from LAST_ACK: 5
        raw(4, 1024, Role.LISTENER, (S.LISTEN,), 10 * SEC, 12 * SEC),  # listen, close: 2
        raw(5, 1024, Role.ACTIVE, (S.TIME_WAIT,), 5 * SEC),  # found before the run: not counted
        raw(6, 2048, Role.PASSIVE, server, 10 * SEC, 11 * SEC),  # another port: not counted
    ], offset)
    store.close()
    assert tracers.stored_transitions(db, [1024], 1_700_000_009.0) == 17


def runs(daemon_rate: float = 28_500, lost: int = 0, stored_short: int = 0) -> list[Run]:
    out = []
    for rate in (29_000, 28_800, 29_200):
        out.append(Run("untraced", int(rate * 10), 10.0, int(rate * 100) + 4))
        d = Run("daemon", int(daemon_rate * 10), 10.0, int(daemon_rate * 100) + 4)
        d.counted, d.delivered, d.lost, d.gone = d.generated, d.generated + 12, lost, 0
        d.stored = d.generated - stored_short
        d.cpu_s, d.peak_rss_mb, d.ready_s = 9.5, 400.0, 0.6
        out.append(d)
    return out


def test_targets_met_and_missed() -> None:
    hold = Hold(100_000, 250.0, 0.3, 200_000, 1.5)
    soak = Soak(600, 10**7, [300, 310, 305, 300, 302, 309])
    met = report.targets(runs(), hold, soak)
    assert met.met, met.checks
    missed = report.targets(runs(daemon_rate=26_000, lost=5, stored_short=5),
                           Hold(100_000, 350.0, 1.2, 200_000, 1.5), Soak(600, 10**7, [300, 300, 450, 500]))
    assert [ok for _, ok, _ in missed.checks] == [False, False, True, False, False, False]


def test_table_has_every_figure_per_setup() -> None:
    text = report.table(runs())
    lines = text.splitlines()
    assert "untraced" in lines[0] and "daemon" in lines[0] and "tcpstates" not in lines[0]
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["connections/s", "share of untraced", "transitions generated", "counted in the kernel",
                      "delivered to user space (host)", "stored in the timeline", "events reported lost",
                      "lives found ended unseen", "tracer CPU s (load + catch-up)", "tracer peak RSS MB", "time to ready s"]
    assert "98.3%" in lines[3]  # 28,500 / 29,000
    assert "(100.0%)" in lines[5]


def test_bad_flags_are_one_line_errors() -> None:
    for flags in (["--seconds", "0"], ["--rounds", "0"], ["--hold", "-1"], ["--seconds", "nan"],
                  ["--load", "one-listener"], ["--warm", "-1"], ["--warm", "soon"]):
        done = subprocess.run([sys.executable, "-m", "tracer", "bench", *flags], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 2, flags
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("usage:") is False


def test_losses_are_split_by_reason() -> None:
    metrics = {'tcpstate_events_lost_total{reason="ring_buffer_full"}': 3.0,
               'tcpstate_events_lost_total{reason="program_not_run"}': 0.0,
               'tcpstate_events_received_total': 9.0}
    assert tracers.lost_by_reason(metrics) == {"ring_buffer_full": 3, "program_not_run": 0}


@pytest.mark.parametrize(("shape", "threads", "ports", "generated"), [
    # 10 a connection, 2 a listener: one listener a thread, or one for all of them.
    (load.LISTENER_PER_THREAD, 2, [1024, 1025], 10 * 1000 + 2 * 2),
    (load.LISTENER_PER_THREAD, 3, [1024, 1025, 1026], 10 * 1000 + 2 * 3),
    (load.SHARED_LISTENER, 2, [1024], 10 * 1000 + 2 * 1),
    (load.SHARED_LISTENER, 4, [1024], 10 * 1000 + 2 * 1),
])
def test_each_shape_generates_a_known_count_on_known_ports(shape, threads, ports, generated) -> None:
    assert shape.ports(threads) == ports
    assert shape.generated(1000, threads) == generated
    assert shape.generated(0, threads) == 2 * len(ports)  # the listeners' own


class FakeNamespace:
    """Answers as the load generator would, and records what the bench ran."""

    def __init__(self, line: str) -> None:
        self.line, self.ran, self.renewed = line, [], 0

    def run(self, *argv: str) -> str:
        self.ran.append(argv)
        return self.line

    def renew(self) -> None:
        self.renewed += 1


def test_an_untraced_run_is_the_shape_s_mode_in_a_fresh_namespace(tmp_path: Path) -> None:
    ns = FakeNamespace('{"connections": 5000, "errors": 0, "seconds": 1.0, "threads": 2, "listeners": 1}')
    b = Bench(ns, tmp_path / "loadgen", tmp_path, 1.0, 2, [], shape=load.SHARED_LISTENER)
    run = b.untraced()
    assert ns.renewed == 1 and ns.ran == [(str(tmp_path / "loadgen"), "shared-listener", "1024", "1", "2")]
    assert (run.setup, run.connections, run.generated) == ("untraced", 5000, 50_002)
    assert b.ports == [1024]


@pytest.mark.parametrize(("line", "error"), [
    ('{"connections": 5, "errors": 3, "seconds": 1.0, "threads": 2, "listeners": 2}', "3 failed connections"),
    ('{"connections": 5, "errors": 0, "seconds": 1.0, "threads": 2, "listeners": 1}', "opened 1 listeners"),
    ("usage: loadgen ...", "not its JSON line"),
])
def test_a_load_that_cannot_be_counted_stops_the_bench(tmp_path: Path, line: str, error: str) -> None:
    with pytest.raises(bench.BenchError, match=error):
        load.churn(FakeNamespace(line), tmp_path / "loadgen", load.LISTENER_PER_THREAD, 1.0, 2)


def test_load_and_warm_flags_reach_the_bench(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(bench, "main", lambda *args, **kw: seen.update(kw) or 0)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the bench's SIGTERM handler
    assert cli.main(["bench", "--load", "shared-listener", "--warm", "5"]) == 0
    assert (seen["load"], seen["warm_s"]) == ("shared-listener", 5)
    assert cli.main(["bench"]) == 0
    assert (seen["load"], seen["warm_s"]) == ("listener-per-thread", 0)


def test_the_flag_takes_every_shape_and_defaults_to_the_original_one() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["bench"]).load == load.LISTENER_PER_THREAD.name
    for name in load.SHAPES:
        assert parser.parse_args(["bench", "--load", name]).load == name


def test_an_unknown_shape_is_refused_before_anything_runs(monkeypatch) -> None:
    monkeypatch.setattr(bench.os, "geteuid", lambda: 0)
    with pytest.raises(bench.BenchError, match="no load shape 'ring'"):
        bench.main(1.0, 1, 2, False, 0, 0, None, [], load="ring")
