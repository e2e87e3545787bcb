"""Bounded labels on a live host: --max-ports folds the rest into port="other", counts kept."""

from __future__ import annotations

import json
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.live import traffic
from tests.live.conftest import start_daemon, stop_daemon
from tracer.metrics import port_label_values


def kernel_transitions(map_id: int) -> int:
    """Every transition the program's counter map holds, read with bpftool: not through the daemon."""
    dump = json.loads(subprocess.run(["bpftool", "map", "dump", "id", str(map_id), "-j"],
                                     capture_output=True, text=True, check=True).stdout)
    total = 0
    for entry in dump:
        key = entry["key"]
        kind = int(key[2], 16)  # struct tcpstate_count_key: port (2 bytes), kind, old, new, pad
        if kind == 0:
            for cpu in entry["values"]:
                total += int.from_bytes(bytes(int(b, 16) for b in cpu["value"]), "little")
    return total


def newest_map(name: str) -> int:
    maps = json.loads(subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, text=True,
                                     check=True).stdout)
    return max(m["id"] for m in maps if m.get("name") == name)


def test_sixty_listening_ports_and_max_ports_20(live_host, tmp_path):
    daemon = start_daemon(tmp_path, "--max-ports", "20")
    try:
        counts_map = newest_map("counts")
        for _ in range(60):
            traffic.client_closed(traffic.quiet_port(), 1)
        before = kernel_transitions(counts_map)
        text = daemon.metrics()
        after = kernel_transitions(counts_map)
    finally:
        assert stop_daemon(daemon) == 0, daemon.log.read_text()
    families = list(text_string_to_metric_families(text))
    ports = port_label_values(families)
    assert len(ports) <= 21 and "other" in ports, sorted(ports)
    exported = sum(s.value for f in families if f.name == "tcpstate_transitions" for s in f.samples
                   if s.name == "tcpstate_transitions_total")
    # The scrape's own connection adds transitions while it runs: the daemon's sum lies
    # between the kernel's just before and just after.
    assert before <= exported <= after, (before, exported, after)
    assert exported >= 60 * 12
    folded = [s.value for f in families if f.name == "tcpstate_ports_folded" for s in f.samples]
    assert folded and folded[0] >= 40
