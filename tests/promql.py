"""The dashboards' queries as PromQL trees (promql-parser: the Rust promql-parser crate's
parser), for the dashboard tests: variables filled in as Grafana would, every node with
its ancestors, and the labels an expression's result carries."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import promql_parser as pq

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
TARGET_LABELS = frozenset({"job", "instance"})

# Grafana's own variables, as a length no query spells by itself, so that a range can be
# told apart after parsing (grafana/dashboard-linter does the same with other values).
MAGIC = {"__rate_interval": "7777s", "__range": "6666s", "__interval": "5555s"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def dashboards() -> dict[str, dict]:
    """The committed dashboards, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict) -> Iterator[dict]:
    """Every panel but rows (the generator puts no panel inside a row)."""
    for panel in board["panels"]:
        if panel["type"] != "row":
            yield panel


def targets() -> Iterator[tuple[str, dict, dict, dict]]:
    """(file name, dashboard, panel, target) for every query of every dashboard."""
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                yield name, board, panel, target


def fill(expr: str, values: dict[str, str]) -> str:
    """``expr`` with $name and ${name} replaced by ``values``, Grafana's own variables by
    MAGIC where ``values`` has none (a missing one raises KeyError: a variable nobody
    defined)."""
    known = {**MAGIC, **values}
    return _VARIABLE.sub(lambda m: known[m.group(1) or m.group(2)], expr)


def variables_used(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)} - set(MAGIC)


def parse(expr: str):
    return pq.parse(expr)


def children(node) -> list:
    if isinstance(node, pq.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pq.Call):
        return list(node.args)
    if isinstance(node, pq.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, (pq.AggregateExpr, pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr)):
        return [node.expr] + ([node.param] if isinstance(node, pq.AggregateExpr) and node.param else [])
    return []


def walk(node, parents: tuple = ()) -> Iterator[tuple[object, tuple]]:
    """Every node with its ancestors, outermost first."""
    yield node, parents
    for child in children(node):
        yield from walk(child, parents + (node,))


def selectors(node) -> Iterator[tuple[pq.VectorSelector, tuple]]:
    for n, parents in walk(node):
        if isinstance(n, pq.VectorSelector):
            yield n, parents


def matchers(selector: pq.VectorSelector) -> list[tuple[str, str, str]]:
    """(label, operator, value) for each matcher; operator as PromQL spells it."""
    ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
    return [(m.name, ops[str(m.op).split(".")[-1].split("(")[0]], m.value) for m in selector.matchers.matchers]


def labels_of(node, exported: dict[str, set[str]]) -> set[str] | None:
    """The label names of the result of ``node`` (None for a scalar), as Prometheus
    computes them: a selector has its metric's labels and the target's; aggregations keep
    their by() labels; a binary operation the left side's, narrowed by on()/ignoring() for
    arithmetic, widened by group_left's labels."""
    if isinstance(node, pq.VectorSelector):
        return set(exported.get(node.name, set())) | TARGET_LABELS
    if isinstance(node, (pq.MatrixSelector, pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr)):
        return labels_of(children(node)[0], exported)
    if isinstance(node, (pq.NumberLiteral, pq.StringLiteral)):
        return None
    if isinstance(node, pq.AggregateExpr):
        inner = labels_of(node.expr, exported) or set()
        if node.modifier is None:
            return set()
        grouping = set(node.modifier.labels)
        return grouping if str(node.modifier.type).endswith("By") else inner - grouping
    if isinstance(node, pq.Call):
        vectors = [labels_of(a, exported) for a in node.args if not isinstance(a, (pq.NumberLiteral, pq.StringLiteral))]
        result = next((v for v in vectors if v is not None), set())
        if node.func.name == "histogram_quantile":
            return result - {"le"}
        if node.func.name in ("absent", "vector", "time", "scalar"):
            return set()
        return result
    if isinstance(node, pq.BinaryExpr):
        lhs, rhs = labels_of(node.lhs, exported), labels_of(node.rhs, exported)
        if lhs is None or rhs is None:
            return lhs if rhs is None else rhs
        modifier = node.modifier
        set_or_filter = str(node.op) in ("and", "or", "unless") or (
            str(node.op) in ("==", "!=", ">", "<", ">=", "<=") and not (modifier and modifier.return_bool))
        if set_or_filter or modifier is None or modifier.matching is None:
            return lhs
        card = str(modifier.card)
        group = set(modifier.group_labels or [])
        if card.endswith("ManyToOne"):
            return lhs | group
        if card.endswith("OneToMany"):
            return rhs | group
        on = set(modifier.matching.labels)
        return lhs & on if str(modifier.matching.type).endswith("Include") else lhs - on
    raise TypeError(f"no labels for {type(node).__name__}: {node}")


def matching(node) -> Iterator[tuple[pq.BinaryExpr, set[str]]]:
    """Binary operations between two vectors with on(...), and the labels they match on."""
    for n, _ in walk(node):
        if (isinstance(n, pq.BinaryExpr) and n.modifier is not None and n.modifier.matching is not None
                and str(n.modifier.matching.type).endswith("Include")):
            yield n, set(n.modifier.matching.labels)
