"""tracer/host/blindspots.py without the kernel: reading ftrace's lines, naming blind threads, its program file."""

from __future__ import annotations

from collections import Counter

from tracer.host import blindspots
from tracer.host.blindspots import BlindThread

LINES = [
    "# tracer: nop\n",
    "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n",
    " tokio-rt-worker-75      [001] ..s1. 43807.783662: softirq_entry: vec=1 [action=TIMER]\n",
    " tokio-rt-worker-75      [001] ..s1. 43807.783667: softirq_entry: vec=7 [action=SCHED]\n",
    "         loadgen-31812   [000] ..s2. 43100.338040: softirq_entry: vec=3 [action=NET_RX]\n",
    "          <idle>-0       [000] ..s1. 43100.338041: softirq_entry: vec=1 [action=TIMER]\n",
    " kworker/u8:2-my-name-9  [001] ..s1. 43100.338042: softirq_entry: vec=9 [action=RCU]\n",
    "         loadgen-31812   [000] ..s2. 43100.338043: softirq_exit: vec=3 [action=NET_RX]\n",
]


def test_ftrace_lines_are_counted_per_thread_with_dashes_in_names() -> None:
    counts, names = blindspots.ftrace_counts(LINES)
    assert counts == Counter({75: 2, 31812: 1, 0: 1, 9: 1})
    assert names[75] == "tokio-rt-worker" and names[9] == "kworker/u8:2-my-name" and names[0] == "<idle>"


def test_blind_threads_are_those_ftrace_saw_often_enough_and_bpf_never() -> None:
    counts, names = blindspots.ftrace_counts(LINES)
    found = blindspots.blind(counts, names, {31812: 5, 0: 1})
    assert found == [BlindThread(75, "tokio-rt-worker", 2, 0)]  # tid 9: once is not enough to say
    assert blindspots.blind(counts, names, {75: 1}) == []


def test_describe_is_one_line_grouped_by_name() -> None:
    assert blindspots.describe([], 5).startswith("none in 5 s")
    line = blindspots.describe([BlindThread(75, "tokio-rt-worker", 4, 0), BlindThread(68, "tokio-rt-worker", 3, 0)], 5)
    assert "tokio-rt-worker (tid 75, 68)" in line and "7 softirqs" in line and "\n" not in line


def test_summary_warns_when_threads_are_blind_or_the_probe_cannot_run(monkeypatch) -> None:
    def failing(seconds, root):
        raise blindspots.ProbeError("tracefs is not mounted")

    monkeypatch.setattr(blindspots, "probe", failing)
    assert blindspots.summary(5) == ("not probed: tracefs is not mounted", True)
    monkeypatch.setattr(blindspots, "probe", lambda seconds, root: blindspots.Probe(
        [BlindThread(75, "tokio-rt-worker", 4, 0)], Counter({75: 4}), {}))
    line, warn = blindspots.summary(5)
    assert warn and "tokio-rt-worker (tid 75)" in line
    monkeypatch.setattr(blindspots, "probe", lambda seconds, root: blindspots.Probe([], Counter(), {}))
    assert blindspots.summary(5) == (blindspots.describe([], 5), False)


def test_the_program_is_a_file_whose_default_map_size_is_the_one_python_passes() -> None:
    source = blindspots.PROGRAM.read_text()
    assert blindspots.PROGRAM.name == "blindspots.bpf.c" and blindspots.PROGRAM.parent.name == "bpf"
    assert f"#define BLINDSPOTS_MAX_THREADS {blindspots.MAX_THREADS}\n" in source
    assert "TRACEPOINT_PROBE(irq, softirq_entry)" in source
