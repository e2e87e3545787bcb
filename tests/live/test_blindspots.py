"""The blind-spot probe on the real kernel: a thread making loopback traffic does its
softirq work where the BPF program sees it, as ftrace does."""

from __future__ import annotations

import threading
import time

from tests.live import traffic
from tracer.host import blindspots, headers


def test_the_probe_sees_the_softirq_work_of_a_thread_making_loopback_traffic(live_host) -> None:
    headers.prepare()
    tids: list[int] = []
    stop = threading.Event()

    def churn() -> None:
        tids.append(threading.get_native_id())
        deadline = time.monotonic() + 30  # bounded, whatever the probe does
        while not stop.is_set() and time.monotonic() < deadline:
            traffic.client_closed(traffic.quiet_port(), 20)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        result = blindspots.probe(2.0)
    finally:
        stop.set()
        t.join(30)
    tid = tids[0]
    assert result.ftrace[tid] > 0, "ftrace saw no softirq work on top of the traffic thread"
    # The program was attached before ftrace was enabled and read after it was disabled.
    assert result.bpf.get(tid, 0) >= result.ftrace[tid]
    assert tid not in {b.tid for b in result.blind}
    # Every thread named blind was seen by ftrace and never by the program.
    assert all(b.ftrace_events >= blindspots.MIN_EVENTS and b.bpf_runs == 0 for b in result.blind)
