"""What the daemon exports: every series name with its label names, and which series
only grow. From the real collector over a replayed recording and a stuck scan, and from
the golden expositions (tests/fixtures/*.metrics.txt, which tests/unit/test_exposition.py
keeps byte for byte what the collector writes), where the kernel's statistics, the
timeline and the housekeeper have figures. The alert rules' tests and the dashboards'
tests check what they query against it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tracer.core import record
from tracer.core.detector import Rules
from tracer.core.ports import PortLabels
from tracer.core.tracker import Tracker
from tracer.metrics import ConflictFamilies, HealthFamilies, KernelFamilies, TableFamilies, TcpStateCollector, build_info
from tracer.sources.replay import ReplaySource

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOOPBACK_3 = FIXTURES / "loopback-3-client-close.jsonl"
# Suffixes a family's series carry in Prometheus; "cumulative" ones only ever grow.
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
             "summary": ["", "_sum", "_count"], "info": ["_info"]}
_CUMULATIVE = {"counter": {"_total"}, "histogram": {"_bucket", "_sum", "_count"}, "summary": {"_sum", "_count"}}


def series_names(family: Metric) -> set[str]:
    """The names a family's series carry in Prometheus, with or without samples now."""
    return {family.name + s for s in _SUFFIXES.get(family.type, [""])} | {s.name for s in family.samples}


@cache
def families() -> tuple[Metric, ...]:
    source = ReplaySource(LOOPBACK_3)
    try:
        tracker = Tracker(timewait_ns=60 * 10**9, max_sockets=1000, rules=Rules.build(msl_s=30))
        last_ts = 0
        while (batch := source.read()) is not None:
            tracker.apply_batch(batch)
            last_ts = batch[-1][record.Field.TS]
        housekeeping = SimpleNamespace(report=tracker.scan(last_ts + 1), last_read_s=0.0, store=None,
                                       failures=0)
        labels = PortLabels(64, range(32768, 61000))
        limits = {"tcp_max_tw_buckets": 131072, "ephemeral_ports": 28232}
        conflicts = SimpleNamespace(dropped=0, counts=lambda: {(8080, "time_wait"): 1})
        collector = TcpStateCollector(
            KernelFamilies(source, labels), TableFamilies(tracker, labels, stuck=housekeeping),
            HealthFamilies(labels, limits, build_info(source.bcc_version), lag=SimpleNamespace(lag_s=0.0, records_failed=0),
                           kernel_table=housekeeping), labels, conflicts=ConflictFamilies(conflicts, labels))
        collected = list(collector.collect())
    finally:
        source.close()
    for golden in sorted(FIXTURES.glob("*.metrics.txt")):
        collected += text_string_to_metric_families(golden.read_text())
    return tuple(collected)


def exported() -> dict[str, set[str]]:
    """Series name -> label names (empty when no sample showed them)."""
    names: dict[str, set[str]] = {}
    for family in families():
        for name in series_names(family):
            # The labels a family declares, also where no sample has them yet (resets, retransmits).
            names.setdefault(name, set()).update(getattr(family, "_labelnames", ()))
        for s in family.samples:
            names[s.name] |= set(s.labels) - {"le", "quantile"}
    return names


def cumulative() -> set[str]:
    """Series that only grow (counters, and histograms' buckets, sums and counts): read
    them only through rate() or increase()."""
    return {family.name + suffix for family in families() for suffix in _CUMULATIVE.get(family.type, ())}
