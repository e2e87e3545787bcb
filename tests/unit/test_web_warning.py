"""The daemon warns when its web address is reachable from elsewhere and nothing
protects it; on loopback, or with TLS and a password, it says nothing."""

from __future__ import annotations

import logging

import bcrypt
import pytest

from tests import pki as pki_mod
from tracer import config
from tracer.daemon import StartupError, _web_config


def _cfg(address: str, web_config=None) -> config.Config:
    flags = {"web_listen_address": address}
    if web_config:
        flags["web_config_file"] = str(web_config)
    return config.load(flags, environ={})


@pytest.mark.parametrize("address, warned", [
    ("127.0.0.1:9876", None), ("[::1]:9876", None), ("localhost:9876", None),
    (":9876", "without TLS or authentication"), ("0.0.0.0:9876", "without TLS or authentication"),
    ("10.1.2.3:9876", "without TLS or authentication"),
])
def test_warns_off_loopback_without_protection(caplog, address, warned):
    with caplog.at_level(logging.WARNING, logger="tracer.daemon"):
        _web_config(_cfg(address))
    messages = [r.getMessage() for r in caplog.records]
    assert (warned is None and not messages) or (len(messages) == 1 and warned in messages[0]), messages


def test_tls_and_a_password_silence_it_and_either_alone_is_named(caplog, tmp_path):
    pki = pki_mod.make(tmp_path / "pki")
    tls = "tls_server_config:\n  cert_file: pki/server.crt\n  key_file: pki/server.key\n"
    users = f"basic_auth_users:\n  alice: {bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}\n"
    for text, warned in ((tls + users, None), (tls, "without authentication"), (users, "without TLS")):
        caplog.clear()
        path = tmp_path / "web.yml"
        path.write_text(text)
        with caplog.at_level(logging.WARNING, logger="tracer.daemon"):
            _web_config(_cfg("0.0.0.0:9876", path))
        messages = [r.getMessage() for r in caplog.records]
        assert (warned is None and not messages) or (len(messages) == 1 and warned in messages[0]), messages
    assert pki.ca.exists()


def test_a_bad_web_config_is_a_startup_error(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text("nonsense: 1\n")
    with pytest.raises(StartupError, match="unknown key 'nonsense'"):
        _web_config(_cfg("127.0.0.1:9876", path))

