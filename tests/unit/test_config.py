"""Configuration: defaults < file < environment < flags, every problem reported at once."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from tracer.config import SETTINGS, Config, ConfigError, add_flags, load, parse_listen_address


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracer.yaml"
    path.write_text(text)
    return path


def test_defaults():
    config = load(flags={}, environ={})
    assert config.web_listen_address == "127.0.0.1:9876"  # loopback only unless asked
    assert (config.msl, config.two_msl, config.timewait_seconds) == (30.0, 60.0, 60.0)  # Linux
    assert config.ring_buffer_mib == 64
    assert config.log_level == "info"
    assert config.config_file is None
    for s in SETTINGS:
        assert getattr(config, s.attr) == s.default, s.name


def test_config_is_frozen():
    config = load(flags={}, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.msl = 1.0  # type: ignore[misc]


def test_every_setting_has_a_config_field():
    assert {s.attr for s in SETTINGS} == {f.name for f in dataclasses.fields(Config)} - {"config_file"}


@pytest.mark.parametrize("file, env, flag, expected", [
    (None, None, None, 30.0),
    ("7", None, None, 7.0),
    ("7", "8", None, 8.0),
    ("7", "8", "9", 9.0),
    (None, "8", None, 8.0),
    (None, None, "9", 9.0),
    ("7", None, "9", 9.0),
])
def test_precedence(tmp_path, file, env, flag, expected):
    flags: dict = {}
    environ: dict = {}
    if file is not None:
        flags["config_file"] = str(write(tmp_path, f"msl: {file}\n"))
    if env is not None:
        environ["TCPSTATE_TRACER_MSL"] = env
    if flag is not None:
        flags["msl"] = flag
    assert load(flags=flags, environ=environ).msl == expected


def test_nested_file_keys_and_env_names(tmp_path):
    path = write(tmp_path, "web:\n  listen_address: '[::1]:9000'\nlog:\n  level: debug\n")
    config = load(flags={"config_file": str(path)}, environ={"TCPSTATE_TRACER_LOG_LEVEL": "warning"})
    assert (config.web_listen_address, config.log_level, config.config_file) == ("[::1]:9000", "warning", path)


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, "max_sockets: 5\n")
    config = load(flags={}, environ={"TCPSTATE_TRACER_CONFIG_FILE": str(path)})
    assert (config.max_sockets, config.config_file) == (5, path)


def test_flags_parsed_by_argparse_reach_load():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--web.listen-address", ":9000", "--ring-buffer-mib", "8", "--max-sockets", "10"])
    config = load(flags=vars(args), environ={})
    assert (config.web_listen_address, config.ring_buffer_mib, config.max_sockets) == (":9000", 8, 10)


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "msl: -1\nbogus: 3\nweb:\n  listen_address: 127.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        load(flags={"config_file": str(path), "ring_buffer_mib": "3"},
             environ={"TCPSTATE_TRACER_LOG_LEVEL": "loud"})
    problems = info.value.problems
    assert len(problems) == 5, problems
    expected = [
        ("bogus", f"file {path}"),
        ("msl", f"file {path}"),
        ("web.listen_address", f"file {path}"),
        ("ring_buffer_mib", "flag --ring-buffer-mib"),
        ("log.level", "TCPSTATE_TRACER_LOG_LEVEL"),
    ]
    for setting, where in expected:
        assert any(setting in p and where in p for p in problems), (setting, where, problems)
    assert all("\n" not in p for p in problems)
    assert str(info.value) == "; ".join(problems)


@pytest.mark.parametrize("attr, name, value", [
    ("msl", "msl", "soon"),
    ("msl", "msl", "0"),
    ("timewait_seconds", "timewait_seconds", "-5"),
    ("max_sockets", "max_sockets", "1.5"),
    ("max_sockets", "max_sockets", "0"),
    ("ring_buffer_mib", "ring_buffer_mib", "48"),
    ("log_level", "log.level", "verbose"),
    ("web_listen_address", "web.listen_address", "localhost"),
])
def test_bad_flag_values(attr, name, value):
    with pytest.raises(ConfigError) as info:
        load(flags={attr: value}, environ={})
    (problem,) = info.value.problems
    setting = next(s for s in SETTINGS if s.attr == attr)
    assert problem.startswith(f"{name} (flag {setting.flag}): ")
    assert value in problem


@pytest.mark.parametrize("text, line", [
    ("msl: 30\n  bad indent: 1\n", 2),
    ("msl: 30\n\tlog: x\n", 2),
    ("msl: 30\nlog: info\nweb: @x\n", 3),
    ("msl: 30\n- listen\n", 2),
])
def test_yaml_syntax_error_is_one_line_with_the_line_number(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(flags={"config_file": str(path)}, environ={})
    (problem,) = info.value.problems
    assert "\n" not in problem
    assert str(path) in problem
    assert re.search(rf"\bline {line}\b", problem), problem


@pytest.mark.parametrize("text", ["- msl\n- 30\n", "just words\n"])
def test_file_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(flags={"config_file": str(path)}, environ={})


def test_empty_file_means_defaults(tmp_path):
    path = write(tmp_path, "# nothing set\n")
    assert load(flags={"config_file": str(path)}, environ={}).msl == 30.0


def test_missing_file_is_a_problem(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(flags={"config_file": str(tmp_path / "nope.yaml")}, environ={})
    (problem,) = info.value.problems
    assert "nope.yaml" in problem and "cannot read" in problem


@pytest.mark.parametrize("text, problem", [
    ("max_sockets: true\n", "max_sockets"),
    ("msl: [1, 2]\n", "msl"),
    ("cache_dir: 5\n", "cache_dir"),
    ("log:\n  level: 3\n", "log.level"),
])
def test_wrong_types_in_file(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(flags={"config_file": str(path)}, environ={})
    (got,) = info.value.problems
    assert got.startswith(f"{problem} (file {path})")


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9876", ("127.0.0.1", 9876)),
    ("localhost:80", ("localhost", 80)),
    ("[::1]:9876", ("::1", 9876)),
    ("[fe80::1%lo]:9876", ("fe80::1%lo", 9876)),
    (":9876", ("0.0.0.0", 9876)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ("host:1", ("host", 1)),
])
def test_parse_listen_address(value, expected):
    assert parse_listen_address(value) == expected


@pytest.mark.parametrize("value", [
    "127.0.0.1",
    "9876",
    "",
    ":",
    "host:",
    "host:0",
    "host:65536",
    "host:http",
    "host:-1",
    "[::1]",
    "::1",
    "fe80::1",
    "::1:9876",
])
def test_parse_listen_address_rejects(value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_listen_address(value)
