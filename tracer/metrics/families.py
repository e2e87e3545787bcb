"""Metric families from plain snapshots: the builders every source's collector shares.

A family's samples are sorted by their key's text, so the exposition of the same
input is the same bytes from scrape to scrape (tests/unit/test_exposition.py pins
it). Port keys are folded through the one PortLabels of the daemon: two ports that
share the label "other" share a series, and their counts are added, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tracer.core.states import STATE_NAMES
from tracer.core.tracker import DURATION_BUCKETS_S, Histogram

BUCKET_LABELS = [f"{b:g}" for b in DURATION_BUCKETS_S] + ["+Inf"]

Names = Callable[[tuple], list[str]]  # a key tuple -> its label values


def port_state(key: tuple) -> list[str]:
    """Label values of a (port label, state number) key."""
    return [key[0], STATE_NAMES[key[1]]]


def fold(values: Mapping[tuple, float], label: Callable[[Any], str],
         merge: Callable[[list[float]], float] = sum) -> dict[tuple, float]:
    """Re-keys (port, ...) by the port's label, merging what lands on one key."""
    grouped: dict[tuple, list[float]] = {}
    for (port, *rest), value in values.items():
        grouped.setdefault((label(port), *rest), []).append(value)
    return {key: merge(vals) for key, vals in grouped.items()}


def fold_histograms(values: Mapping[tuple, Histogram], label: Callable[[Any], str]) -> dict[tuple, Histogram]:
    """fold for histograms: the buckets and sums of ports sharing a label are added."""
    folded: dict[tuple, Histogram] = {}
    for (port, *rest), h in values.items():
        key = (label(port), *rest)
        into = folded.get(key)
        if into is None:
            folded[key] = h.copy()
        else:
            into.counts = [a + b for a, b in zip(into.counts, h.counts)]
            into.sum_ns += h.sum_ns
    return folded


def _family(kind: type, name: str, doc: str, labels: list[str], values: Mapping[tuple, float],
            names: Names = list) -> Metric:
    family = kind(name, doc, labels=labels)
    for key, n in sorted(values.items(), key=lambda kv: str(kv[0])):
        family.add_metric(names(key), n)
    return family


def counter(name: str, doc: str, labels: list[str], values: Mapping[tuple, float], names: Names = list) -> Metric:
    """A counter family from {label values tuple: value} (``name`` without ``_total``)."""
    return _family(CounterMetricFamily, name, doc, labels, values, names)


def gauge(name: str, doc: str, labels: list[str], values: Mapping[tuple, float], names: Names = list) -> Metric:
    """A gauge family from {label values tuple: value}."""
    return _family(GaugeMetricFamily, name, doc, labels, values, names)


def histogram(name: str, doc: str, labels: list[str], values: Mapping[tuple, Histogram],
              names: Names) -> Metric:
    """A histogram family from {key: Histogram}: the tracker's per-bucket counts made
    cumulative, as the exposition format wants them, and its sum in seconds."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, h in sorted(values.items(), key=lambda kv: str(kv[0])):
        cumulative, buckets = 0, []
        for bound, n in zip(BUCKET_LABELS, h.counts):
            cumulative += n
            buckets.append((bound, cumulative))
        family.add_metric(names(key), buckets, h.sum_ns / 1e9)
    return family


def info(name: str, doc: str, values: Mapping[str, str]) -> Metric:
    """A gauge of 1 whose labels carry the information, in the labels' name order."""
    family = GaugeMetricFamily(name, doc, labels=sorted(values))
    family.add_metric([values[k] for k in sorted(values)], 1)
    return family


def port_label_values(metrics: Iterable[Metric]) -> set[str]:
    """Every value of the port label in a collection, for tests and checks."""
    return {s.labels["port"] for m in metrics for s in m.samples if "port" in s.labels}
