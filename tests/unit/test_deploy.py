"""Deploy files are code: the commands they run must be commands the CLI takes."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tracer import config
from tracer.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_daemonset_runs_the_daemon_with_flags_it_knows_and_probes_it():
    ds = yaml.safe_load((DEPLOY / "kubernetes" / "daemonset.yaml").read_text())
    pod = ds["spec"]["template"]
    container = pod["spec"]["containers"][0]
    argv = container["command"][1:] + container["args"]
    args = build_parser().parse_args(argv)
    cfg = config.load(vars(args), environ={})
    host, port = config.parse_listen_address(cfg.web_listen_address)
    assert container["ports"][0]["containerPort"] == port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert pod["spec"]["hostPID"] is True, "namespaces are found through the host's /proc"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/kernel/tracing", "/usr/src", "/run/netns", str(cfg.cache_dir), str(cfg.db.parent)} <= mounts


def test_systemd_unit_runs_the_daemon_with_flags_it_knows():
    unit = (DEPLOY / "systemd" / "tcpstate-tracer.service").read_text()
    lines = [l.split("=", 1)[1] for l in unit.splitlines() if l.startswith(("ExecStart=", "ExecStartPre="))]
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line.replace("$TCPSTATE_TRACER_ARGS", ""))
        assert argv[0].endswith("/.venv/bin/tcpstate-tracer")
        build_parser().parse_args(argv[1:])
