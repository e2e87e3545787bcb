"""Faults a real daemon survives, each counted: the ring buffer full while its reader
is paused (what the program sent is what the daemon received, the rest counted lost,
the kernel's transition counts exact), and the timeline's disk full (metrics and the
API go on, the lives that could not be written are counted, and writes resume once
there is room again)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.live import traffic
from tests.live.conftest import http_get, start_daemon, stop_daemon
from tracer.bench.tracers import scrape, sum_samples


def _caught_up(m: dict[str, float]) -> bool:
    """Everything the program sent was received, and what was taken from its map of
    young lives: received = sent + taken, exactly."""
    return m.get("tcpstate_events_received_total", 0) == (m.get("tcpstate_kernel_events_sent_total", -1)
                                                         + m.get("tcpstate_kernel_events_taken_total", 0))


def _settled(d, timeout: float = 30) -> dict[str, float]:
    """The metrics once the daemon has taken in everything the program sent (at a
    moment with none of the host's own few events a second in flight), the reader not
    behind."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(d.url)
        caught_up = _caught_up(m)
        if (caught_up and m.get("tcpstate_event_lag_seconds", 0) < 0.5) or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def test_a_full_ring_buffer_loses_only_what_it_counts(live_host, tmp_path):
    """A 1 MiB ring buffer (about 6,900 life records) and the daemon stopped (SIGSTOP)
    while 5,000 connections (10,000 lives) are made: the program finds the buffer full."""
    port = traffic.quiet_port()
    d = start_daemon(tmp_path, "--ring-buffer-mib", "1")
    try:
        before = _settled(d, 10)
        d.proc.send_signal(signal.SIGSTOP)
        try:
            traffic.client_closed(port, 5000)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        after = _settled(d)
        assert http_get(d.url + "/healthz")[0] == 200
        delta = {name: sum_samples(after, name) - sum_samples(before, name) for name in (
            "tcpstate_kernel_events_sent_total", "tcpstate_events_received_total", "tcpstate_kernel_events_taken_total")}
        lost = (after.get('tcpstate_events_lost_total{reason="ring_buffer_full"}', 0)
                - before.get('tcpstate_events_lost_total{reason="ring_buffer_full"}', 0))
        assert lost > 0, "the buffer never filled: the test shows nothing"
        # Everything the program put into the buffer reached the daemon, with what it took
        # from the map of young lives (at a moment with nothing in flight: _settled waits
        # for one); what found the buffer full is counted.
        assert _caught_up(after), after
        assert delta["tcpstate_events_received_total"] == (delta["tcpstate_kernel_events_sent_total"]
                                                           + delta["tcpstate_kernel_events_taken_total"])
        # The kernel's own counts stay exact: 10 transitions a connection, 2 for the listener,
        # but for what the kernel ran no program for (counted, though not by port).
        deadline = time.monotonic() + 5
        while True:  # the last servers' LAST_ACK -> CLOSE may still be on their way
            now = scrape(d.url)
            skipped = (now.get('tcpstate_events_lost_total{reason="program_not_run"}', 0)
                       - before.get('tcpstate_events_lost_total{reason="program_not_run"}', 0))
            counted = sum_samples(now, "tcpstate_transitions_total", [port])
            if counted >= 5000 * 10 + 2 - skipped or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        edges = {k.split("{")[1]: v for k, v in now.items()
                 if k.startswith("tcpstate_transitions_total{") and f'port="{port}"' in k and v not in (1, 5000)}
        assert 5000 * 10 + 2 - skipped <= counted <= 5000 * 10 + 2, (counted, skipped, edges)
        # And the daemon goes on: the next connections are taken in whole.
        port2 = traffic.quiet_port()
        traffic.client_closed(port2, 20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, body = http_get(f"{d.url}/api/v1/sockets?port={port2}&limit=1000")
            if len([s for s in json.loads(body)["sockets"] if s["role"] != "listener"]) == 40:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the connections after the loss were not all stored")
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGCONT)
        assert stop_daemon(d) == 0, d.log.read_text()


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tcpstate-test", str(where)], check=True)


def test_a_full_disk_drops_and_counts_the_lives_and_writes_resume_with_room(live_host, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "400k")
    d = None
    try:
        d = start_daemon(tmp_path, "--db", str(disk / "timeline.db"), "--retention.size", "1MiB")
        port = traffic.quiet_port()
        failed = 0
        for _ in range(20):  # bounded: 20 rounds of 200 connections fill 400 KB many times over
            traffic.client_closed(port, 200)
            time.sleep(1.2)  # a flush
            m = scrape(d.url)
            failed = m.get('tcpstate_timeline_records_lost_total{reason="write_failed"}', 0)
            if failed:
                break
        assert failed > 0, "the disk never filled"
        # Metrics, health and the API keep answering.
        assert http_get(d.url + "/healthz")[0] == 200
        status, body = http_get(f"{d.url}/api/v1/sockets?port={port}&limit=5")
        assert status == 200 or (status == 503 and "\"error\"" in body), body
        # Room again: later lives are written, and stay written after the next flushes.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        port2 = traffic.quiet_port()
        traffic.client_closed(port2, 20)
        stored = lambda: len([s for s in json.loads(http_get(f"{d.url}/api/v1/sockets?port={port2}&limit=1000")[1])
                              ["sockets"] if s["role"] != "listener"])  # noqa: E731
        deadline = time.monotonic() + 10  # the clients' TIME_WAITs are written once open 2 s
        while stored() < 40 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert stored() == 40
        time.sleep(2.5)  # and still so after the next flushes
        assert stored() == 40
        assert "cannot write" in d.log.read_text()
    finally:
        if d is not None:
            assert stop_daemon(d) == 0, d.log.read_text()
        subprocess.run(["umount", str(disk)], check=False)


def test_namespaces_that_vanish_while_the_table_is_read_are_no_failures(live_host, tmp_path):
    """Namespaces made and deleted over and over while the daemon reads every namespace's
    table each second: one that goes between the listing and the read is gone, not a
    failed read, and the daemon stays healthy."""
    from tests.live.netns import unique_name

    d = start_daemon(tmp_path, "--timewait-reconcile-seconds", "1")
    names = []
    try:
        before = scrape(d.url).get("tcpstate_kernel_table_read_failures_total", 0)
        end = time.monotonic() + 8
        rounds = 0
        while time.monotonic() < end and rounds < 400:  # bounded either way
            # A few alive at a time, the oldest deleted as each new one comes: a read that
            # lists them finds some gone by the time it gets to them.
            name = unique_name("vanish")
            subprocess.run(["ip", "netns", "add", name], check=True)
            names.append(name)
            if len(names) > 3:
                subprocess.run(["ip", "netns", "delete", names.pop(0)], check=True)
            rounds += 1
        time.sleep(2.5)  # the reads after the last deletion too
        after = scrape(d.url)
        assert after.get("tcpstate_kernel_table_read_failures_total", 0) == before, d.log.read_text()[-2000:]
        assert http_get(d.url + "/healthz")[0] == 200 and rounds > 10
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False)
        assert stop_daemon(d) == 0, d.log.read_text()


def test_kill_9_during_writes_loses_no_committed_record_and_the_store_opens_again(live_host, tmp_path):
    import sqlite3
    import threading

    port = traffic.quiet_port()
    d = start_daemon(tmp_path)
    stop = threading.Event()

    failures: list[BaseException] = []

    def load() -> None:  # rounds of 50 connections, for up to 30 s, while lives are written
        try:
            end = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < end:
                traffic.client_closed(port, 50)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    churn = threading.Thread(target=load, daemon=True)
    seen: set[int] = set()
    try:
        churn.start()
        deadline = time.monotonic() + 20
        while len(seen) < 300 and time.monotonic() < deadline:  # what the API served was committed
            _, body = http_get(f"{d.url}/api/v1/sockets?port={port}&limit=1000")
            seen |= {s["id"] for s in json.loads(body)["sockets"]}
            time.sleep(0.2)
        assert churn.is_alive(), (f"the load ended before the kill: it would not be during writes {failures}, "
                                  f"{len(seen)} seen")
    finally:
        d.proc.kill()  # SIGKILL, while the load runs and the writer writes
        d.proc.wait(10)
        stop.set()
        churn.join(60)
    assert len(seen) >= 300
    db = tmp_path / "timeline.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM lifecycles")}
    finally:
        conn.close()
    assert seen <= stored, f"{len(seen - stored)} committed records lost"
    again = start_daemon(tmp_path)  # the same database opens again
    try:
        _, body = http_get(f"{again.url}/api/v1/sockets?port={port}&limit=1")
        assert json.loads(body)["total"] >= len(seen)
    finally:
        assert stop_daemon(again) == 0, again.log.read_text()


def test_full_kernel_maps_are_counted_and_the_counts_stay_exact(live_host, tmp_path):
    """--max-sockets 64 sizes the program's map of who each socket is: 150 connections
    held open past their first moments overflow it. The overflow is counted, the daemon
    stays healthy, and the kernel's per-port transition counts stay exact."""
    import socket as sockets

    port = traffic.quiet_port()
    d = start_daemon(tmp_path, "--max-sockets", "64")
    listener = traffic.listener("127.0.0.1", port)
    held = []
    try:
        before = scrape(d.url)
        for _ in range(150):
            c = sockets.create_connection(("127.0.0.1", port))
            s, _ = listener.accept()
            held += [c, s]
        time.sleep(1.0)  # past 0.3 s: user space takes their lives out of the kernel's map
        for s in held:
            s.close()
        listener.close()
        after = _settled(d)
        full = sum_samples(after, "tcpstate_kernel_map_full_total") - sum_samples(before, "tcpstate_kernel_map_full_total")
        assert full > 0, "no map filled: the test shows nothing"
        assert _caught_up(after), after  # 300 lives taken from the map: received = sent + taken
        assert sum_samples(after, "tcpstate_kernel_events_taken_total") >= 600
        assert http_get(d.url + "/healthz")[0] == 200
        skipped = (after.get('tcpstate_events_lost_total{reason="program_not_run"}', 0)
                   - before.get('tcpstate_events_lost_total{reason="program_not_run"}', 0))
        counted = sum_samples(after, "tcpstate_transitions_total", [port])
        assert 150 * 10 + 2 - skipped <= counted <= 150 * 10 + 2, (counted, skipped)
    finally:
        for s in held:
            s.close()
        listener.close()
        assert stop_daemon(d) == 0, d.log.read_text()
