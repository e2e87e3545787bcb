"""The bench's arithmetic: stored transitions, the table, the targets, its flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tracer import bench
from tracer.bench import Hold, Run, Soak
from tracer.core.states import Role, TcpState as S
from tracer.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
LOOP = bytes([127, 0, 0, 1]) + bytes(12)
COMM = b"loadgen".ljust(16, b"\0")
SEC = 10**9


def raw(uid, port, role, states, start_ns, end_ns=None):
    history = tuple(x for i, s in enumerate(states) for x in (s.value, start_ns + i * 1000))
    return (uid, 0, 2, LOOP, 40000 + uid, LOOP, port, role.value, port, 7, COMM, history, end_ns)


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
    assert bench.stored_transitions(db, [1024], 1_700_000_009.0) == 17


def runs(daemon_rate: float = 28_000, lost: int = 0, stored_short: int = 0) -> list[Run]:
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
    met = bench.targets(runs(), hold, soak)
    assert met.met, met.checks
    missed = bench.targets(runs(daemon_rate=26_000, lost=5, stored_short=5),
                           Hold(100_000, 350.0, 1.2, 200_000, 1.5), Soak(600, 10**7, [300, 300, 450, 500]))
    assert [ok for _, ok, _ in missed.checks] == [False, False, True, False, False, False]


def test_table_has_every_figure_per_setup() -> None:
    text = bench.table(runs())
    lines = text.splitlines()
    assert "untraced" in lines[0] and "daemon" in lines[0] and "tcpstates" not in lines[0]
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["connections/s", "share of untraced", "transitions generated", "counted in the kernel",
                      "delivered to user space (host)", "stored in the timeline", "events reported lost",
                      "lives found ended unseen", "tracer CPU s (load + catch-up)", "tracer peak RSS MB", "time to ready s"]
    assert "96.6%" in lines[3]  # 28,000 / 29,000
    assert "(100.0%)" in lines[5]


def test_bad_flags_are_one_line_errors() -> None:
    for flags in (["--seconds", "0"], ["--rounds", "0"], ["--hold", "-1"], ["--seconds", "nan"]):
        done = subprocess.run([sys.executable, "-m", "tracer", "bench", *flags], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 2, flags
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("usage:") is False


def test_losses_are_split_by_reason() -> None:
    metrics = {'tcpstate_events_lost_total{reason="ring_buffer_full"}': 3.0,
               'tcpstate_events_lost_total{reason="program_not_run"}': 0.0,
               'tcpstate_events_received_total': 9.0}
    assert bench._lost_by_reason(metrics) == {"ring_buffer_full": 3, "program_not_run": 0}
