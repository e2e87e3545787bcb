"""deploy/prometheus: the scrape config and alert rules are code.

promtool checks them and runs their unit tests (alerts_test.yml); every metric the
rules, their descriptions and their tests name must be one the daemon exports,
with its labels and states spelled the way the daemon spells them.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.exported import exported as exported_series
from tracer.config import SETTINGS, parse_listen_address
from tracer.core.states import STATE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
ALERTS = DEPLOY / "alerts.yml"
ALERTS_TEST = DEPLOY / "alerts_test.yml"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
PROMTOOL = Path("/usr/bin/promtool")  # Debian's prometheus package
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
JOB = "tcpstate-tracer"

# Metrics a rule may use before tracer/metrics.py exports them: keep this tiny, and
# delete a name once it is exported (test_not_yet_exported_names_are_not_exported
# says when). Empty: connect failures, kernel limits and build info are exported.
NOT_YET_EXPORTED: frozenset[str] = frozenset()
# Not the daemon's: Prometheus writes `up` for every target it scrapes.
PROMETHEUS_OWN = frozenset({"up"})
TARGET_LABELS = frozenset({"instance", "job"})
STATE_LABELS = ("state", "from_state", "to_state")

# -- reading PromQL ------------------------------------------------------------------

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                       "unless", "bool", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[a-zA-Z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not
    functions, aggregations, keywords, label names or durations."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        if m.group() not in _KEYWORDS and not text[m.end():].lstrip().startswith("("):
            names.add(m.group())
    return names


def matchers(expr: str) -> Iterator[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every matcher of a named selector."""
    for selector in _SELECTOR.finditer(expr):
        for m in _MATCHER.finditer(selector.group(2)):
            yield selector.group(1), m.group(1), m.group(2), m.group(3)


@pytest.mark.parametrize("expr, names", [
    ('increase(tcpstate_stuck_total{state="LAST_ACK"}[10m]) > 0', {"tcpstate_stuck_total"}),
    ("sum by (instance) (a) / on (instance) group_left b{name=\"c\"} > 0.8", {"a", "b"}),
    ("sum(rate(x[5m] offset 1h)) by (port) and on(port, instance) y", {"x", "y"}),
    ('absent(up{job="tcpstate-tracer"})', {"up"}),
    ('max_over_time(foo:rate5m[1h:1m]) > 1e3 unless bar{a=~"b|c"}', {"foo:rate5m", "bar"}),
    ('label_replace(m, "dst", "$1", "src", "(.*)") and inf > nan', {"m"}),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


def test_matchers_are_read_from_selectors():
    expr = 'a{state="LAST_ACK", port!="other"} / b{name=~"x|y"}'
    assert list(matchers(expr)) == [("a", "state", "=", "LAST_ACK"), ("a", "port", "!=", "other"),
                                    ("b", "name", "=~", "x|y")]


# -- what the daemon exports -------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_series()


def test_the_collector_exports_what_the_checks_rely_on(exported):
    # If these vanish, the checks below would pass for the wrong reason.
    for name in ("tcpstate_transitions_total", "tcpstate_sockets", "tcpstate_stuck_total",
                 "tcpstate_stuck_sockets", "tcpstate_events_lost_total"):
        assert name in exported
    assert exported["tcpstate_transitions_total"] == {"port", "from_state", "to_state"}
    assert exported["tcpstate_stuck_total"] == {"port", "state"}


def test_not_yet_exported_names_are_not_exported(exported):
    assert not NOT_YET_EXPORTED & exported.keys(), (
        f"{sorted(NOT_YET_EXPORTED & exported.keys())} exported now: delete from NOT_YET_EXPORTED")


# -- the files -------------------------------------------------------------------------


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


ALERT_RULES = alert_rules()
ALERT_IDS = [rule["alert"] for rule in ALERT_RULES]


def test_alert_names_are_unique():
    assert len(set(ALERT_IDS)) == len(ALERT_IDS)


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_IDS)
def test_alert_has_severity_summary_and_description(rule):
    assert rule["alert"].startswith("TcpState")
    assert rule.get("labels", {}).get("severity") in ("warning", "critical")
    annotations = rule.get("annotations", {})
    for key in ("summary", "description"):
        assert isinstance(annotations.get(key), str) and annotations[key].strip(), key


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_IDS)
def test_alert_names_only_metrics_the_daemon_exports(rule, exported):
    known = exported.keys() | NOT_YET_EXPORTED | PROMETHEUS_OWN
    used = metric_names(rule["expr"])
    assert used, rule["expr"]
    assert used <= known, f"not exported: {sorted(used - known)}"
    mentioned = set(re.findall(r"\btcpstate_\w+", " ".join(rule["annotations"].values())))
    assert mentioned <= known, f"annotations name metrics not exported: {sorted(mentioned - known)}"


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_IDS)
def test_alert_matches_labels_and_states_as_the_daemon_spells_them(rule, exported):
    for metric, label, op, value in matchers(rule["expr"]):
        if metric in PROMETHEUS_OWN:
            assert (label, value) == ("job", JOB)
            continue
        if exported.get(metric):  # label names known from the replayed samples
            assert label in exported[metric] | TARGET_LABELS, f"{metric} has no label {label}"
        if label in STATE_LABELS and op in ("=", "!="):
            assert value in STATE_NAMES.values(), f"{metric}{{{label}={value!r}}}: no such state"


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    fires, quiet = set(), set()
    for case in load(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(ALERT_IDS) - fires == set(), "alerts with no test where they fire"
    assert set(ALERT_IDS) - quiet == set(), "alerts with no test where they stay quiet"


def test_unit_test_series_look_like_the_daemons(exported):
    known = exported.keys() | NOT_YET_EXPORTED | PROMETHEUS_OWN
    for case in load(ALERTS_TEST)["tests"]:
        for series in case["input_series"]:
            (name,) = metric_names(series["series"])
            assert name in known, f"{case['name']}: {name} is not exported"
            labels = {label for _, label, _, _ in matchers(series["series"])}
            assert TARGET_LABELS <= labels, f"{case['name']}: {series['series']} lacks instance/job"
            if exported.get(name):
                assert labels - TARGET_LABELS == exported[name], f"{case['name']}: {series['series']}"


def test_scrape_config_matches_the_rules_and_the_daemons_default_address():
    config = load(PROMETHEUS_YML)
    assert config["rule_files"] == [ALERTS.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    default = next(s.default for s in SETTINGS if s.name == "web.listen_address")
    _, port = parse_listen_address(default)
    assert job["static_configs"] == [{"targets": [f"localhost:{port}"]}]


# -- promtool --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not PROMTOOL.exists():
        reason = f"{PROMTOOL} is missing: install Debian's prometheus package (make setup)"
        if CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return PROMTOOL


@pytest.mark.parametrize("args", [
    ["check", "config", str(PROMETHEUS_YML)],  # checks alerts.yml too, through rule_files
    ["check", "rules", str(ALERTS)],
    ["test", "rules", str(ALERTS_TEST)],
], ids=["check config", "check rules", "test rules"])
def test_promtool(promtool, args):
    done = subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60,
                          cwd=DEPLOY)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_kubernetes_scrape_config_checks_but_for_its_discovery(promtool, tmp_path):
    """deploy/prometheus/kubernetes.yml, the DaemonSet's job. Debian's Prometheus is
    built without Kubernetes service discovery (promtool: "field kubernetes_sd_configs
    not found"), so promtool checks a copy whose discovery is a file of targets; the
    discovery itself is checked here: endpoints of the Service in the DaemonSet's
    namespace, kept by the Service's label and port name as the manifests set them."""
    import shutil

    config = yaml.safe_load((DEPLOY / "kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "tcpstate-tracer"
    manifests = list(yaml.safe_load_all((DEPLOY.parent / "kubernetes" / "daemonset.yaml").read_text()))
    service = next(m for m in manifests if m["kind"] == "Service")
    assert job.pop("kubernetes_sd_configs") == [{"role": "endpoints",
                                                 "namespaces": {"names": [service["metadata"]["namespace"]]}}]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_service_label_app_kubernetes_io_name",)] == \
        service["metadata"]["labels"]["app.kubernetes.io/name"]
    assert keep[("__meta_kubernetes_endpoint_port_name",)] == service["spec"]["ports"][0]["name"]
    job["file_sd_configs"] = [{"files": ["targets.json"]}]
    (tmp_path / "targets.json").write_text('[{"targets": ["node-1:9876"]}]')
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(promtool), "check", "config", str(tmp_path / "kubernetes.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
