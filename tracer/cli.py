"""The `tcpstate-tracer` command: run, watch, replay, stuck, conflicts, port, check, bench.

Errors the operator can fix end here as one line on stderr and a non-zero exit:
2 for bad flags or configuration, 1 for everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import platform
import sys
import time
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tracer import __version__, config
from tracer.daemon.signals import StopSignals

if TYPE_CHECKING:
    from tracer.console import TransitionPrinter
    from tracer.core.tracker import Tracker
    from tracer.sources import EventSource

PROG = "tcpstate-tracer"


class CliError(Exception):
    """A one-line error for the operator; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Every TCP state transition on this host, through eBPF.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the daemon: /metrics, /healthz, /readyz",
                         description="Trace every TCP state transition and serve Prometheus metrics.")
    config.add_flags(run)
    run.add_argument("--check-config", action="store_true",
                     help="validate the configuration, print every problem, and exit")

    watch = sub.add_parser("watch", help="live transitions, one a line",
                           description="Print every TCP state transition as it happens.")
    watch.add_argument("--port", type=_port, help="only this service port")
    watch.add_argument("--json", action="store_true", help="one JSON object a line")
    watch.add_argument("--record", type=Path, metavar="FILE",
                       help="also write every event to FILE (JSON lines) for `replay`")
    watch.add_argument("--config.file", dest="config_file", metavar="PATH", help="YAML configuration file")

    replay = sub.add_parser("replay", help="print a recording as `watch` printed it",
                            description="Feed a recording through the same core and print what `watch` printed.")
    replay.add_argument("file", type=Path, metavar="FILE")
    replay.add_argument("--port", type=_port, help="only this service port")
    replay.add_argument("--json", action="store_true", help="one JSON object a line")

    stuck = sub.add_parser("stuck", help="sockets stuck now, from the running daemon",
                           description="Ask the running daemon which sockets are stuck: LAST_ACK and "
                                       "TIME_WAIT beyond 2MSL, CLOSE_WAIT leaks, half-closed FIN_WAIT2...")
    stuck.add_argument("--web.listen-address", dest="web_listen_address", metavar="ADDRESS",
                       help="where the daemon listens (default: as configured, 127.0.0.1:9876)")
    stuck.add_argument("--json", action="store_true", help="the API's JSON as it is")
    stuck.add_argument("--config.file", dest="config_file", metavar="PATH", help="YAML configuration file")
    stuck.add_argument("--web.config.file", dest="web_config_file", metavar="PATH",
                       help="the daemon's web config: TLS to it (trusting its certificate); a password from "
                            "TCPSTATE_TRACER_WEB_USER and TCPSTATE_TRACER_WEB_PASSWORD")

    conflicts = sub.add_parser("conflicts", help="refused bind() calls and connects with no free local port, "
                                                 "from the running daemon",
                               description="Ask the running daemon which bind() calls were refused with "
                                           "EADDRINUSE, what held the port and what to do about it; and which "
                                           "connect() calls found no free local port (EADDRNOTAVAIL), with what "
                                           "held the local ports toward their destination.")
    conflicts.add_argument("--port", type=_port, help="only this port (the destination's, for a connect())")
    conflicts.add_argument("--web.listen-address", dest="web_listen_address", metavar="ADDRESS",
                           help="where the daemon listens (default: as configured, 127.0.0.1:9876)")
    conflicts.add_argument("--json", action="store_true",
                           help="the API's JSON: both answers in one object (conflicts, refused)")
    conflicts.add_argument("--config.file", dest="config_file", metavar="PATH", help="YAML configuration file")
    conflicts.add_argument("--web.config.file", dest="web_config_file", metavar="PATH",
                       help="the daemon's web config: TLS to it (trusting its certificate); a password from "
                            "TCPSTATE_TRACER_WEB_USER and TCPSTATE_TRACER_WEB_PASSWORD")

    port = sub.add_parser("port", help="who holds a TCP port now, in every namespace (no daemon needed)",
                          description="Read the kernel's socket table in every network namespace: the "
                                      "listeners on PORT and their owners, its TIME_WAIT sockets and when the "
                                      "last expires, sockets in other states; and what a new bind() of the "
                                      "port gets without SO_REUSEADDR and with it, tried for real (the trial "
                                      "socket holds the port for microseconds). As root.")
    port.add_argument("port", type=_port, metavar="PORT")
    port.add_argument("--no-trial", action="store_true", help="do not try a bind() of the port")
    port.add_argument("--json", action="store_true", help="one JSON document")

    check = sub.add_parser("check", help="can this host run the daemon? one line per problem",
                           description="Preflight: privileges, bcc, tracefs, tracepoints, kernel headers, "
                                       "a real load of the BPF program, and a probe for threads whose "
                                       "softirq work the kernel runs no BPF program for.")
    check.add_argument("--config.file", dest="config_file", metavar="PATH", help="YAML configuration file")
    check.add_argument("--probe-seconds", type=_count(0), default=5, metavar="N",
                       help="how long to watch softirq work for threads BPF cannot see; 0 skips it (default 5)")

    bench = sub.add_parser(
        "bench", help="loopback churn: untraced vs the daemon (vs bcc tcpstates), what each kept",
        description="Drive loopback connection churn in a private network namespace, alternating runs "
                    "with nothing attached and with the daemon (and bcc's tcpstates), and report "
                    "connections/s, transitions generated/counted/delivered/stored, events lost, CPU, "
                    "memory and time to ready. Exits 3 when a target is missed. As root; needs gcc.")
    bench.add_argument("--seconds", type=_positive, default=10.0, help="length of each run (default 10)")
    bench.add_argument("--rounds", type=_count(1), default=3, help="runs of each setup, alternating (default 3)")
    bench.add_argument("--threads", type=_count(1), default=2,
                       help="connections made at a time, one per thread (default 2)")
    bench.add_argument("--load", choices=("listener-per-thread", "shared-listener"), default="listener-per-thread",
                       help="the churn's shape: each thread with a listener of its own, or all threads "
                            "connecting to one listener and accepting in turn (default listener-per-thread)")
    bench.add_argument("--warm", type=_count(0), default=0, metavar="SECONDS",
                       help="how long the daemon runs before the load of each of its runs starts (default 0)")
    bench.add_argument("--compare-tcpstates", action="store_true",
                       help="also run bcc's tcpstates (/usr/sbin/tcpstates-bpfcc) in the same harness")
    bench.add_argument("--hold", type=_count(0), default=100_000, metavar="N",
                       help="then hold N established connections open: RSS and scrape time (0: skip)")
    bench.add_argument("--soak", type=_count(0), default=600, metavar="SECONDS",
                       help="then churn this long with one daemon and sample its memory (default 600; 0: skip)")
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _count(least: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {least}")
        return int(text)
    return parse


def _load_config(args: argparse.Namespace) -> config.Config:
    try:
        return config.load(vars(args))
    except config.ConfigError as exc:
        raise CliError("invalid configuration: " + "; ".join(exc.problems), code=2) from None


def cmd_run(args: argparse.Namespace) -> int:
    if args.check_config:
        try:
            cfg = config.load(vars(args))
        except config.ConfigError as exc:
            for problem in exc.problems:
                print(f"{PROG}: config: {problem}", file=sys.stderr)
            return 2
        print(f"configuration ok: listen on {cfg.web_listen_address}, MSL {cfg.msl:g} s "
              f"(2MSL {cfg.two_msl:g} s), TIME_WAIT {cfg.timewait_seconds:g} s")
        rules = cfg.rules()
        for rule in rules.every():
            print(f"  stuck: {rule.describe()}")
        return 0
    cfg = _load_config(args)
    _setup_logging(cfg.log_level)
    from tracer import daemon

    try:
        return daemon.run(cfg, reload=lambda: config.load(vars(args)))
    except daemon.StartupError as exc:
        raise CliError(str(exc)) from None


def _stream(source: EventSource, printer: TransitionPrinter, tracker: Tracker, record: TextIO | None = None,
            stop: StopSignals | None = None) -> None:
    """Applies the source's records to ``tracker`` as the daemon's event reader does,
    then prints their events in time order (the marks of TIME_WAIT as the batch left
    the model) and writes them to ``record``."""
    from tracer.core.record import Field, events_of, to_json
    from tracer.core.states import TcpState

    close, new = TcpState.CLOSE.value, Field.NEW
    by_time = itemgetter(Field.TS)
    while stop is None or not stop.stopping:
        batch = source.read_records(0.2)
        if batch is None:
            return
        taken = source.sweep()
        if taken:
            batch = batch + taken
        if not batch:
            continue
        tracker.apply_records(batch)
        events = sorted((ev for rec in batch for ev in events_of(rec)), key=by_time)
        for ev in events:
            if record is not None:
                record.write(json.dumps(to_json(ev)) + "\n")
            printer.show(ev, ev[new] == close and tracker.in_timewait(ev))
        tracker.expire(events[-1][Field.TS])
        printer.out.flush()


def _tracker(cfg: config.Config) -> Tracker:
    from tracer.core.tracker import Tracker

    return Tracker(int(cfg.timewait_seconds * 1e9), cfg.max_sockets)


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    _setup_logging("warning")
    from tracer.host import headers, tracefs
    from tracer.console import TransitionPrinter
    from tracer.core.clock import SystemClock
    from tracer.sources.bcc import BccSource, SourceError

    record = None
    if args.record:
        try:
            record = open(args.record, "w", encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write recording {args.record}: {exc.strerror}") from None
    try:
        tracefs.ensure()
        headers.prepare(cfg.cache_dir)
        source = BccSource(ringbuf_pages=cfg.ring_buffer_mib * 256, max_socks=cfg.max_sockets)
    except (tracefs.TracefsError, headers.HeadersError, SourceError) as exc:
        raise CliError(str(exc)) from None
    clock = SystemClock()
    wall_offset_ns = round(clock.wall(0) * 1e9)
    if record is not None:
        meta = {"recorded_by": f"{PROG} {__version__} watch", "kernel": platform.release(),
                "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_offset_ns": wall_offset_ns}
        record.write(json.dumps({"meta": meta}) + "\n")
    stop = StopSignals()
    printer = TransitionPrinter(sys.stdout, args.json, wall_offset_ns, args.port, cfg.max_sockets)
    print(f"{PROG}: watching TCP state transitions"
          + (f" of service port {args.port}" if args.port else "") + " (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        _stream(source, printer, _tracker(cfg), record, stop)
    finally:
        lost = source.lost()
        source.close()
        if record is not None:
            record.close()
    if lost["ring_buffer_full"]:
        print(f"{PROG}: {lost['ring_buffer_full']} events were lost: the ring buffer was full "
              "(raise ring_buffer_mib)", file=sys.stderr)
    if lost["program_not_run"]:
        print(f"{PROG}: {lost['program_not_run']} transitions were not seen: the kernel skipped the "
              "program while another BPF tracing program ran on the same CPU", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tracer.console import TransitionPrinter
    from tracer.sources.replay import ReplayError, ReplaySource, recording_meta

    try:
        meta = recording_meta(args.file)
        source = ReplaySource(args.file)
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    cfg = config.load({}, environ={})
    printer = TransitionPrinter(sys.stdout, args.json, int(meta.get("wall_offset_ns", 0)), args.port,
                                cfg.max_sockets)
    try:
        _stream(source, printer, _tracker(cfg))
    except ReplayError as exc:
        sys.stdout.flush()
        raise CliError(f"replay stopped: {exc}") from None
    finally:
        source.close()
    return 0


def _ask_daemon(args: argparse.Namespace, path: str) -> str:
    """GET ``path`` from the running daemon's API; the body as text. With the daemon's
    web config (--web.config.file), over TLS, trusting the daemon's own certificate,
    and with TCPSTATE_TRACER_WEB_USER and TCPSTATE_TRACER_WEB_PASSWORD when it asks for
    a password (an environment variable, not a flag: a flag shows in ps)."""
    import base64
    import urllib.error
    import urllib.request

    from tracer.web import webconfig

    cfg = _load_config(args)
    host, port = config.parse_listen_address(cfg.web_listen_address)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    context, scheme, headers = None, "http", {}
    if cfg.web_config_file:
        try:
            web = webconfig.load(cfg.web_config_file)
        except webconfig.WebConfigError as exc:
            raise CliError(str(exc)) from None
        if web.tls is not None:
            scheme, context = "https", _trust_the_daemon(web.tls.certificate)
    user, password = os.environ.get("TCPSTATE_TRACER_WEB_USER"), os.environ.get("TCPSTATE_TRACER_WEB_PASSWORD")
    if user and password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10,
                                    context=context) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise CliError(f"the daemon at {url} asks for a password: set TCPSTATE_TRACER_WEB_USER and "
                           "TCPSTATE_TRACER_WEB_PASSWORD" + (" (these were refused)" if headers else "")) from None
        raise CliError(f"the daemon at {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        hint = ("is it served over TLS? give its --web.config.file" if scheme == "http"
                else "is `tcpstate-tracer run` running there with this web config?")
        raise CliError(f"cannot reach the daemon at {url}: {reason} "
                       f"(is `tcpstate-tracer run` running there? see --web.listen-address; {hint})") from None


def _trust_the_daemon(certificate: str):
    """A TLS context that trusts the certificate the daemon's web config serves (as
    an anchor of its own, CA-signed or not), for a client on the daemon's host."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # 127.0.0.1 need not be among the certificate's names
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=certificate)
    return ctx


def cmd_stuck(args: argparse.Namespace) -> int:
    body = _ask_daemon(args, "/api/v1/stuck")
    if args.json:
        print(body)
        return 0
    from tracer.console import print_stuck

    print_stuck(json.loads(body), sys.stdout)
    return 0


def cmd_conflicts(args: argparse.Namespace) -> int:
    only = f"&port={args.port}" if args.port else ""
    answer = json.loads(_ask_daemon(args, "/api/v1/bind-conflicts?limit=1000" + only))
    answer.update(json.loads(_ask_daemon(args, "/api/v1/no-local-port?limit=1000" + only)))
    if args.json:
        print(json.dumps(answer))
        return 0
    from tracer.console import print_conflicts, print_no_local_port

    print_conflicts(answer, sys.stdout)
    sys.stdout.write("\n")
    print_no_local_port(answer, sys.stdout)
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tracer.console import print_port
    from tracer.core.conflicts import remedy
    from tracer.sources import kernel_table, port_holders

    if os.geteuid() != 0:
        raise CliError("reading every network namespace's sockets and their owners needs root")
    try:
        paths = kernel_table.namespaces()
        found, problems = port_holders.holders(args.port, paths)
    except (OSError, kernel_table.KernelTableError) as exc:
        raise CliError(f"reading the kernel's socket table failed: {exc}") from None
    report = []
    for ino, held in sorted(found.items()):
        entry = {"netns": ino, "path": paths.get(ino, ""), "holder": held.holder,
                 "listeners": [asdict(x) for x in held.listeners], "time_wait": held.time_wait,
                 "time_wait_left_s": round(held.time_wait_left_s, 3), "others": dict(held.others),
                 "remedy": remedy(args.port, held)}
        if not args.no_trial:
            try:
                tried = port_holders.trial_bind(args.port, paths[ino])
            except OSError as exc:
                problems.append(f"trying a bind() in network namespace {ino} failed: {exc}")
            else:
                entry["trial"] = {family: {"plain": tried[(family, False)], "reuseaddr": tried[(family, True)]}
                                  for family in ("ipv4", "ipv6")}
        report.append(entry)
    if args.json:
        print(json.dumps({"port": args.port, "namespaces": report, "namespaces_read": len(paths),
                          "problems": problems}, indent=2))
    else:
        print_port(args.port, report, sys.stdout)
        free = len(paths) - len(report)
        if report and free > 0:
            print(f"free in the other {free} network namespace(s)")
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    from tracer.host import preflight

    results = preflight.run_checks(cache_dir=cfg.cache_dir, probe_s=args.probe_seconds)
    for r in results:
        print(f"{('warn' if r.warn else 'ok') if r.ok else 'FAIL':<5}{r.name:<12} {r.message}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{PROG}: {len(failed)} problem(s): this host cannot run the daemon yet", file=sys.stderr)
        return 1
    warned = [r.name for r in results if r.warn]
    print("this host can run tcpstate-tracer" + (f" (see the warning: {', '.join(warned)})" if warned else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import signal

    from tracer import bench

    # Stopped with SIGTERM, it still deletes its namespace and stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return bench.main(args.seconds, args.rounds, args.threads, args.compare_tcpstates, args.hold,
                          args.soak, args.json, daemon_flags=[], load=args.load, warm_s=args.warm)
    except bench.BenchError as exc:
        raise CliError(str(exc)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


COMMANDS = {"run": cmd_run, "watch": cmd_watch, "replay": cmd_replay, "stuck": cmd_stuck,
            "conflicts": cmd_conflicts, "port": cmd_port, "check": cmd_check, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tcpstate-tracer replay FILE | head`: the reader has gone, which is fine.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
