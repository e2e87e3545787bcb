"""Configuration: one frozen, validated object from defaults, file, environment and flags.

Each setting is declared once (SETTINGS); its flag (``--web.listen-address``), its
environment variable (``TCPSTATE_TRACER_WEB_LISTEN_ADDRESS``) and its place in the
YAML file (``web: {listen_address: ...}``) all derive from its dotted name. Later
sources win. Validation collects every problem in plain words instead of stopping
at the first.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tracer.core.detector import WATCHED, Rules
from tracer.core.states import TcpState

ENV_PREFIX = "TCPSTATE_TRACER_"


class ConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    name: str  # dotted: "web.listen_address"
    kind: type
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda value: None
    file_only: bool = False  # tables: no flag, no environment variable

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()


class Duration(float):
    """Seconds, written as Prometheus writes durations: 90s, 30m, 12h, 7d, 2w, 1h30m.

    A float, so the rest of the code computes with it; it shows as it was written."""

    UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    PATTERN = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
    text: str

    @classmethod
    def parse(cls, raw: Any) -> "Duration":
        if isinstance(raw, cls):
            return raw
        text = raw.strip() if isinstance(raw, str) else None
        match = cls.PATTERN.fullmatch(text) if text else None
        if match is None:
            raise ValueError(f"{raw!r} is not a duration: a number and a unit, as in 90s, 30m, 12h, 7d or 2w")
        value = cls(sum(int(n) * unit for n, unit in zip(match.groups(), cls.UNITS.values()) if n))
        value.text = text
        return value

    def __str__(self) -> str:
        return self.text


class ByteSize(int):
    """Bytes, with a unit or without: 1GiB, 512MiB, 512MB (MB = 1000^2, MiB = 1024^2), 1000000."""

    UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")
    text: str

    @classmethod
    def parse(cls, raw: Any) -> "ByteSize":
        if isinstance(raw, cls):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        match = cls.PATTERN.fullmatch(raw.strip()) if isinstance(raw, str) else None
        unit = cls.UNITS.get(match.group(2).lower()) if match else None
        if unit is None:
            raise ValueError(f"{raw!r} is not a size: bytes, or a number and a unit, as in 512MiB, 512MB or 1GiB")
        value = cls(math.floor(float(match.group(1)) * unit))
        value.text = raw.strip()
        return value

    def __str__(self) -> str:
        return self.text


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _power_of_two(value: int) -> str | None:
    return None if value > 0 and value & (value - 1) == 0 else "must be a power of two (1, 2, 4, ... MiB)"


def _listen_address(value: str) -> str | None:
    try:
        parse_listen_address(value)
    except ValueError as exc:
        return str(exc).removeprefix(repr(value) + " ")
    return None


def _seconds_table(table: Any, what: str) -> list[str]:
    if not isinstance(table, Mapping):
        return [f"{what} must map TCP states to seconds"]
    problems = []
    for state, seconds in table.items():
        try:
            if TcpState.parse(str(state)) not in WATCHED:
                problems.append(f"{what}: {state} has no stuck rule (states: {', '.join(s.name for s in WATCHED)})")
        except ValueError as exc:
            problems.append(f"{what}: {exc}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            problems.append(f"{what}: {state}: {seconds!r} is not a number of seconds greater than 0")
    return problems


def _thresholds(value: Mapping) -> str | None:
    problems = _seconds_table(value, "thresholds")
    return "; ".join(problems) or None


def _port_thresholds(value: Mapping) -> str | None:
    if not isinstance(value, Mapping):
        return "must map ports to tables of state: seconds"
    problems = []
    for port, table in value.items():
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{port!r} is not a port")
        problems += _seconds_table(table, f"port {port}")
    return "; ".join(problems) or None


def _at_least_a_mib(value: int) -> str | None:
    return None if value >= 2**20 else "is less than 1MiB: the store would delete everything it keeps"


def _log_level(value: str) -> str | None:
    levels = ("debug", "info", "warning", "error")
    return None if value in levels else f"must be one of {', '.join(levels)}"


SETTINGS: tuple[Setting, ...] = (
    Setting("web.listen_address", str, "127.0.0.1:9876",
            "address for /metrics, /healthz, /readyz (host:port; [::1]:port for IPv6; :port for all)",
            _listen_address),
    Setting("web.config.file", Path, None,
            "TLS, basic authentication and response headers, in the exporter-toolkit's web-config format "
            "(as node_exporter's --web.config.file); without it, plain HTTP with no authentication"),
    Setting("run_as", str, None,
            "once the program is loaded, run as this user with no capabilities; a small helper keeps the "
            "three the reads of other namespaces' socket tables need (README, Least privilege)"),
    Setting("msl", float, 30.0,
            "maximum segment lifetime in seconds; LAST_ACK and TIME_WAIT older than 2*MSL are stuck",
            _positive),
    Setting("timewait_seconds", float, 60.0,
            "how long the kernel keeps TIME_WAIT (Linux: TCP_TIMEWAIT_LEN, 60 s); only for kernels built otherwise",
            _positive),
    Setting("timewait_reconcile_seconds", float, 10.0,
            "how often the modelled TIME_WAIT sockets are checked against the kernel's socket table "
            "(sock_diag); stretched to 10x the time a check takes", _positive),
    Setting("max_sockets", int, 524_288,
            "sockets tracked at most (live and TIME_WAIT each); the oldest are evicted past it", _positive),
    Setting("max_ports", int, 100,
            "service ports with a label of their own; the rest are counted under port=\"other\"",
            lambda v: None if v >= 0 else "must not be negative"),
    Setting("ring_buffer_mib", int, 64,
            "kernel ring buffer for events, MiB (power of two): what the kernel holds while the reader catches up",
            _power_of_two),
    Setting("cache_dir", Path, Path("/var/cache/tcpstate-tracer"),
            "where a kernel header tree is built when the running kernel has none"),
    Setting("log.level", str, "info", "debug, info, warning or error", _log_level),
    Setting("db", Path, Path("/var/lib/tcpstate-tracer/timeline.db"),
            "the timeline's SQLite database (every socket's life); its directory is created if needed"),
    Setting("retention", Duration, Duration.parse("7d"),
            "how long the timeline keeps a socket after it ended: 90s, 30m, 12h, 7d, 2w (open ones are kept)",
            _positive),
    Setting("retention.size", ByteSize, ByteSize.parse("1GiB"),
            "the timeline's size limit: past it the oldest sockets that have ended go first (512MB = 512*1000^2 bytes, "
            "1GiB = 1024^3); in a file, write it as `retention.size: 1GiB` next to `retention: 7d`",
            _at_least_a_mib),
    Setting("stuck.thresholds", dict, {},
            "seconds a socket may stay in a state before it counts as stuck, by state "
            "(LAST_ACK, TIME_WAIT, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, SYN_SENT, SYN_RECV); 2MSL unless set",
            _thresholds, file_only=True),
    Setting("stuck.ports", dict, {},
            "per-port overrides of stuck.thresholds: {port: {state: seconds}}", _port_thresholds, file_only=True),
)


@dataclass(frozen=True)
class Config:
    web_listen_address: str
    msl: float
    timewait_seconds: float
    timewait_reconcile_seconds: float
    max_sockets: int
    max_ports: int
    ring_buffer_mib: int
    cache_dir: Path
    log_level: str
    db: Path = Path("/var/lib/tcpstate-tracer/timeline.db")
    retention: float = Duration.parse("7d")  # seconds
    retention_size: int = ByteSize.parse("1GiB")  # bytes
    stuck_thresholds: dict = field(default_factory=dict)
    stuck_ports: dict = field(default_factory=dict)
    config_file: Path | None = None
    web_config_file: Path | None = None
    run_as: str | None = None

    @property
    def two_msl(self) -> float:
        return 2 * self.msl

    def rules(self) -> Rules:
        return Rules.build(self.msl, self.stuck_thresholds,
                           {int(port): table for port, table in self.stuck_ports.items()})


def parse_listen_address(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{value!r} needs brackets around an IPv6 address, as in [::1]:9876")
    return host or "0.0.0.0", int(port)


def _coerce(setting: Setting, raw: Any, where: str) -> tuple[Any, str | None]:
    kind = setting.kind
    if raw is None and setting.default is None:  # optional, and not given
        return None, None
    try:
        if kind is bool or isinstance(raw, bool):
            raise ValueError
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            value = int(raw)
        elif kind is float:
            value = float(raw)
        elif kind is dict:
            if not isinstance(raw, Mapping):
                raise ValueError
            value = dict(raw)
        elif hasattr(kind, "parse"):  # Duration, ByteSize: their own words for what is wrong
            try:
                value = kind.parse(raw)
            except ValueError as exc:
                return None, f"{setting.name} ({where}): {exc}"
        elif kind is Path:
            if not isinstance(raw, (str, Path)) or not str(raw):
                raise ValueError
            value = Path(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        return None, f"{setting.name} ({where}): {raw!r} is not a valid {kind.__name__}"
    problem = setting.check(value)
    if problem:
        shown = "" if kind is dict else f"{value} "
        return None, f"{setting.name} ({where}): {shown}{problem}"
    return value, None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    tables = {s.name for s in SETTINGS if s.kind is dict}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in tables:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [f"config file {path}: cannot read it ({exc.strerror})"]
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        return {}, [f"config file {path}: not valid YAML{where}"]
    if tree is None:
        return {}, []
    if not isinstance(tree, Mapping):
        return {}, [f"config file {path}: must be a mapping of settings"]
    return _flatten(tree), []


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds every setting as a flag; unset flags stay None so lower sources show through."""
    parser.add_argument("--config.file", dest="config_file", metavar="PATH",
                        help="YAML configuration file (flags override it, it overrides defaults)")
    for s in SETTINGS:
        if not s.file_only:
            parser.add_argument(s.flag, dest=s.attr, default=None, metavar=s.kind.__name__.upper(),
                                help=f"{s.help} (default {s.default}; env {s.env})")


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Builds the Config: defaults < file < environment < flags. ConfigError lists every problem."""
    flags = dict(flags or {})
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    known = {s.name for s in SETTINGS}

    file_value = flags.get("config_file") or environ.get(ENV_PREFIX + "CONFIG_FILE")
    config_file = Path(file_value) if file_value else None
    if config_file is not None:
        values, file_problems = read_file(config_file)
        problems += file_problems
        for name, value in values.items():
            if name in known:
                raw[name] = (value, f"file {config_file}")
            else:
                problems.append(f"config file {config_file}: unknown setting {name!r}")
    for s in SETTINGS:
        if s.file_only:
            continue
        if s.env in environ:
            raw[s.name] = (environ[s.env], f"environment {s.env}")
        if flags.get(s.attr) is not None:
            raw[s.name] = (flags[s.attr], f"flag {s.flag}")

    values: dict[str, Any] = {}
    for s in SETTINGS:
        value, where = raw[s.name]
        coerced, problem = _coerce(s, value, where)
        if problem:
            problems.append(problem)
        values[s.attr] = coerced
    if problems:
        raise ConfigError(problems)
    config_fields = {f.name for f in fields(Config)}
    cfg = Config(config_file=config_file, **{k: v for k, v in values.items() if k in config_fields})
    try:
        cfg.rules()
    except ValueError as exc:
        raise ConfigError([f"stuck: {exc}"]) from None
    return cfg
