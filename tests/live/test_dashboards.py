"""Every dashboard query on a real Prometheus scraping a real daemon after real traffic.

There is no Grafana server here, so the test does what Grafana would: it fills in the
variables (All, and then one job, instance and port), runs each panel's query as a range
or an instant query, and checks that Prometheus accepts it and that it returns data
wherever the daemon has the series it selects. The traffic gives every panel its data:
client-closed connections (the handshake, the four-way close, TIME_WAIT), a socket left
in CLOSE_WAIT past a 1 s threshold (stuck), refused connects (resets, connect failures)
and a refused bind() (a bind conflict).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests import promql
from tests.live.conftest import Daemon, cannot_run, start_daemon, stop_daemon
from tests.live.prometheus import PROMETHEUS, Prometheus, start_prometheus
from tests.live.traffic import client_closed, listener, quiet_port

JOB = "tcpstate-tracer"
CONNECTIONS = 20
REFUSED = 3
# Grafana's own variables for a 1 s scrape: $__rate_interval is at least four scrapes.
GRAFANA = {"__rate_interval": "15s", "__range": "120s", "__interval": "2s"}
WINDOW_S = 120
STEP_S = 2


class Traffic:
    def __init__(self, daemon: Daemon, server: Prometheus, port: int, leak_port: int) -> None:
        self.daemon, self.prometheus, self.port, self.leak_port = daemon, server, port, leak_port

    @property
    def instance(self) -> str:
        return self.daemon.url.removeprefix("http://")


@pytest.fixture(scope="module")
def traffic(live_host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    if not PROMETHEUS.exists():
        cannot_run(f"{PROMETHEUS} is missing: install Debian's prometheus package (make setup)")
    tmp = tmp_path_factory.mktemp("dashboards")
    config = tmp / "tracer.yml"
    config.write_text("stuck:\n  thresholds:\n    CLOSE_WAIT: 1\n")
    daemon = start_daemon(tmp, "--config.file", str(config), "--timewait-reconcile-seconds", "1")
    server = start_prometheus(tmp / "prometheus", daemon.url.removeprefix("http://"), [])
    held: list[socket.socket] = []
    try:
        port, leak_port, closed_port = quiet_port(), quiet_port(), quiet_port()
        client_closed(port, CONNECTIONS)
        # A CLOSE_WAIT leak: the peer closed, the server never does (until teardown).
        leak = listener("127.0.0.1", leak_port)
        held.append(leak)
        client = socket.create_connection(("127.0.0.1", leak_port))
        accepted, _ = leak.accept()
        held.append(accepted)
        client.close()
        # Refused connects: nobody listens on closed_port, the kernel answers with a reset.
        for _ in range(REFUSED):
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.1", closed_port))
        # "Address already in use": the listener holds leak_port; bind() without SO_REUSEADDR.
        with socket.socket() as s:
            with pytest.raises(OSError) as refused:
                s.bind(("127.0.0.1", leak_port))
            assert refused.value.errno == errno.EADDRINUSE
        yield Traffic(daemon, server, port, leak_port)
    finally:
        for s in held:
            s.close()
        server.stop()
        assert stop_daemon(daemon) == 0, daemon.log.read_text()


@pytest.fixture(scope="module")
def settled(traffic: Traffic) -> Traffic:
    """Prometheus has the traffic: the stuck CLOSE_WAIT and the bind conflict scraped, then
    enough scrapes after them for rates over $__rate_interval."""
    p = traffic.prometheus
    p.wait(f'tcpstate_stuck_sockets{{port="{traffic.leak_port}",state="CLOSE_WAIT"}}',
           lambda r: sum(r.values()) == 1, "the CLOSE_WAIT socket stuck", timeout=30)
    p.wait(f'tcpstate_bind_conflicts_total{{port="{traffic.leak_port}",holder="listener"}}',
           lambda r: sum(r.values()) == 1, "the bind conflict", timeout=30)
    p.wait(f'count_over_time(up{{job="{JOB}"}}[{GRAFANA["__rate_interval"]}])',
           lambda r: r and min(r.values()) >= 10, "ten scrapes in a rate interval", timeout=30)
    return traffic


def variables(traffic: Traffic, which: str) -> dict[str, str]:
    """What Grafana sends for "All" (each variable's allValue), or for one job, host, port."""
    if which == "all":
        chosen = {"job": ".+", "instance": ".+", "port": ".+"}
    else:
        # As Grafana interpolates a value of a multi-value variable into a regex matcher:
        # regex-escaped, the backslashes doubled for the PromQL string.
        chosen = {"job": JOB, "instance": re.escape(traffic.instance).replace("\\", "\\\\"),
                  "port": str(traffic.port)}
    return {**chosen, **GRAFANA, "datasource": "prometheus", "timeline_scheme": "http"}


def run(traffic: Traffic, target: dict, values: dict[str, str]) -> list:
    """The query as Grafana runs it: a range over the last WINDOW_S, or an instant."""
    expr = promql.fill(target["expr"], values)
    if target.get("instant"):
        return traffic.prometheus.api("query", query=expr)["result"]
    end = time.time()
    return traffic.prometheus.api("query_range", query=expr, start=str(end - WINDOW_S), end=str(end),
                                  step=str(STEP_S))["result"]


def has_series(traffic: Traffic, selector: str) -> bool:
    end = time.time()
    return bool(traffic.prometheus.api("series", **{"match[]": selector}, start=str(end - WINDOW_S),
                                       end=str(end)))


TARGETS = list(promql.targets())


def target_id(item) -> str:
    return f"{item[0].removesuffix('.json')}: {item[2]['title']} {item[3]['refId']}"


@pytest.mark.parametrize("item", TARGETS, ids=target_id)
def test_query_is_accepted_and_has_data_where_the_daemon_does(settled, item):
    _, _, panel, target = item
    values = variables(settled, "all")
    result = run(settled, target, values)  # raises on any error Prometheus reports
    absent = [str(s) for s, _ in promql.selectors(promql.parse(promql.fill(target["expr"], values)))
              if not has_series(settled, str(s))]
    if absent:
        # Only series this traffic cannot make: retransmissions (loopback loses nothing).
        assert all("tcpstate_retransmits_total" in s for s in absent), f"no series for {absent}"
        return
    assert result, f"{panel['title']}: no data for {target['expr']}"
    # One host, one port, one job: accepted too, and narrower.
    narrow = run(settled, target, variables(settled, "one"))
    for series in narrow:
        labels = series["metric"]
        assert labels.get("instance", settled.instance) == settled.instance
        assert labels.get("port", str(settled.port)) == str(settled.port), labels


@pytest.mark.parametrize("name, board", promql.dashboards().items())
def test_variables_list_what_the_daemon_has(settled, name, board):
    """Each query variable's label_values() lists this daemon's job, instance and ports."""
    expect = {"job": JOB, "instance": settled.instance, "port": str(settled.port)}
    for v in board["templating"]["list"]:
        if v["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]).groups()
        end = time.time()
        found = settled.prometheus.api(f"label/{label}/values", **{"match[]": promql.fill(selector, variables(settled, "all"))},
                                       start=str(end - WINDOW_S), end=str(end))
        assert expect[v["name"]] in found, (name, v["name"], found)


def test_every_metric_the_dashboards_name_is_on_the_daemons_metrics_page(settled):
    """Names taken from the daemon itself, not from the code: the live /metrics page."""
    page = settled.daemon.metrics()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", page, re.M))
    offered = set()
    for family, kind in families:
        offered |= {family + s for s in {"counter": ["_total", ""], "histogram": ["_bucket", "_sum", "_count"]}
                    .get(kind, [""])}
    named = {s.name for *_, target in TARGETS
             for s, _ in promql.selectors(promql.parse(promql.fill(target["expr"], variables(settled, "all"))))}
    assert named - {"up"} <= offered, sorted(named - {"up"} - offered)


# -- the links to each host's timeline -----------------------------------------------------


def stuck_links(board: dict) -> list[str]:
    """The stuck dashboard's data links on series (a time series panel's defaults)."""
    return [link["url"] for panel in promql.panels(board)
            for link in panel["fieldConfig"]["defaults"].get("links", [])]


def test_a_stuck_series_links_to_its_socket_on_that_hosts_timeline(settled, tmp_path):
    """The link of the stuck CLOSE_WAIT's series, built from the labels Prometheus has,
    opens the daemon's page in Chromium filtered to that port and state, and the stuck
    socket is the one the page lists."""
    from tests.live.browser import chromium, console_errors, wait_for

    (series,) = settled.prometheus.api("query", query=f'tcpstate_stuck_sockets{{port="{settled.leak_port}"}} > 0')["result"]
    labels = series["metric"]
    (url, *_) = stuck_links(promql.dashboards()["tcpstate-stuck.json"])
    url = re.sub(r"\$\{__field\.labels\.(\w+)\}", lambda m: labels[m.group(1)], url).replace("${timeline_scheme}", "http")
    assert url == f"http://{settled.instance}/?port={settled.leak_port}&state=CLOSE_WAIT"
    with chromium(tmp_path) as driver:
        driver.get(url)
        wait_for(driver, "document.body.dataset.status === 'ready'", 20, "the timeline loaded")
        form = driver.execute_script("const f = document.querySelector('form').elements;"
                                     "return [f.port.value, f.state.value]")
        assert form == [str(settled.leak_port), "CLOSE_WAIT"]
        wait_for(driver, "document.body.dataset.rendered === '1'", 20, "one socket: the stuck one")
        shown = driver.execute_script("return [...document.querySelectorAll('#sockets tbody tr')]"
                                      ".map(tr => [...tr.querySelectorAll('li.st')].map(li => li.dataset.state))")
        assert console_errors(driver) == []
    assert shown == [["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"]], shown


def test_the_kubernetes_job_names_instances_by_node_and_port_so_links_reach_them(settled, tmp_path):
    """deploy/prometheus/kubernetes.yml's relabelling, run by a real Prometheus: the
    discovery is a file of targets carrying the labels Kubernetes discovery would set
    (Debian's Prometheus has no Kubernetes discovery), the target is the real daemon.
    instance becomes <node>:<port>, which is where the dashboards' links go."""
    import json

    import yaml

    from tests.live.prometheus import DEPLOY

    config = yaml.safe_load((DEPLOY / "kubernetes.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = []
    (job,) = config["scrape_configs"]
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": ["targets.json"]}]
    workdir = tmp_path / "prometheus-k8s"
    workdir.mkdir()
    (workdir / "targets.json").write_text(json.dumps([{"targets": [settled.instance], "labels": {
        "__meta_kubernetes_service_label_app_kubernetes_io_name": "tcpstate-tracer",
        "__meta_kubernetes_endpoint_port_name": "metrics",
        "__meta_kubernetes_endpoint_node_name": "localhost",
        "__meta_kubernetes_namespace": "monitoring",
        "__meta_kubernetes_pod_name": "tcpstate-tracer-x7k2p"}}]))
    server = start_prometheus(workdir, settled.instance, [], config_text=config)
    try:
        node_port = "localhost:" + settled.instance.rsplit(":", 1)[1]
        up = server.wait('up{job="tcpstate-tracer"}', lambda r: r and all(v == 1 for v in r.values()), "up == 1")
        assert [dict(k) for k in up] == [{"__name__": "up", "instance": node_port, "job": "tcpstate-tracer",
                                          "namespace": "monitoring", "pod": "tcpstate-tracer-x7k2p"}]
    finally:
        server.stop()
    from tests.live.conftest import http_get
    status, page = http_get(f"http://{node_port}/?port={settled.leak_port}&state=CLOSE_WAIT")
    assert status == 200 and "timeline" in page.lower()
