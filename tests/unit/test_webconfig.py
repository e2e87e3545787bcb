"""--web.config.file, table-driven over good and bad files as the exporter-toolkit's
own tests are (web/tls_config_test.go, its testdata): each file is written here,
with certificates made by openssl, and either loads or fails with its one line."""

from __future__ import annotations

import ssl
from pathlib import Path

import bcrypt
import pytest

from tests import pki as pki_mod
from tracer.web import webconfig
from tracer.web.webconfig import WebConfigError

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pki_mod.Pki:
    return pki_mod.make(tmp_path_factory.mktemp("pki"))


def _write(pki: pki_mod.Pki, text: str, name: str = "web.yml") -> Path:
    path = pki.dir / name
    path.write_text(text.replace("@CERT@", pki.server_cert.read_text().replace("\n", "\n    "))
                    .replace("@KEY@", pki.server_key.read_text().replace("\n", "\n    ")))
    return path


GOOD = {
    "empty": ("", lambda c: c.tls is None and not c.users),
    "tls files, relative to the file": (TLS, lambda c: c.tls.context.verify_mode == ssl.CERT_NONE
                                        and c.tls.certificate.startswith("-----BEGIN CERTIFICATE-----")),
    "tls inline": ("tls_server_config:\n  cert: |\n    @CERT@\n  key: |\n    @KEY@\n",
                   lambda c: c.tls.certificate.startswith("-----BEGIN CERTIFICATE-----")),
    "verify client cert if given": (TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
                                    lambda c: c.tls.context.verify_mode == ssl.CERT_OPTIONAL),
    "require and verify": (TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                           "  client_allowed_sans: [one, client-one]\n",
                           lambda c: c.tls.context.verify_mode == ssl.CERT_REQUIRED
                           and c.tls.client_allowed_sans == ("one", "client-one") and c.authenticates),
    "some ciphers, TLS 1.2 only": (TLS + "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "
                                   "TLS_AES_128_GCM_SHA256]\n  min_version: TLS12\n  max_version: TLS12\n",
                                   lambda c: c.tls.context.maximum_version == ssl.TLSVersion.TLSv1_2),
    "one curve, TLS 1.3": (TLS + "  min_version: TLS13\n  curve_preferences: [CurveP521]\n",
                           lambda c: c.tls.context.minimum_version == ssl.TLSVersion.TLSv1_3),
    "no server cipher preference": (TLS + "  prefer_server_cipher_suites: false\n",
                                    lambda c: not c.tls.context.options & ssl.OP_CIPHER_SERVER_PREFERENCE),
    "users without tls": (f"basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n",
                          lambda c: set(c.users) == {"alice", "bob"} and c.authenticates),
    "headers": ("http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
                "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
                "    X-Content-Type-Options: nosniff\n    X-XSS-Protection: '1'\n"
                "    Content-Security-Policy: \"default-src 'self' *.example.net\"\n",
                lambda c: c.headers["X-Frame-Options"] == "sameorigin"),
    "http2 off, open probes": ("http_server_config:\n  http2: false\n  open_probes: true\n",
                               lambda c: c.open_probes),
    "rate limit off": ("rate_limit:\n  interval: 0\n  burst: 0\n", lambda c: c.rate_limit is None),
    "rate limit": ("rate_limit:\n  interval: 100ms\n  burst: 5\n",
                   lambda c: (c.rate_limit.interval_s, c.rate_limit.burst) == (0.1, 5)),
}

BAD = {
    "junk": ("hWkNKCp3fvIx3jKnsaBI\nTuEjdwNS8A2vYdFbiKqr\n", "must be a mapping"),
    "not yaml": ("tls_server_config: [\n", "not valid YAML at line"),
    "junk key": ("tls_server_config:\n  cert_filse: server.crt\n", "unknown key 'tls_server_config.cert_filse'"),
    "unknown top key": ("basic_auth: {}\n", "unknown key 'basic_auth'"),
    "cert path empty": ("tls_server_config:\n  cert_file: ''\n  key_file: server.key\n", "missing one of cert or cert_file"),
    "key path empty": ("tls_server_config:\n  cert_file: server.crt\n  key_file: ''\n", "missing one of key or key_file"),
    "cert empty, key given": ("tls_server_config:\n  cert: ''\n  key_file: server.key\n", "missing one of cert or cert_file"),
    "both empty, auth type set": ("tls_server_config:\n  cert_file: ''\n  key_file: ''\n  client_auth_type: x\n",
                                  "missing one of cert or cert_file"),
    "cert file missing": ("tls_server_config:\n  cert_file: somefile\n  key_file: server.key\n", "somefile: no such file"),
    "key file missing": ("tls_server_config:\n  cert_file: server.crt\n  key_file: somefile\n", "somefile: no such file"),
    "key is not the cert's": ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
                              "failed to load the certificate and key"),
    "client CA without policy": (TLS + "  client_ca_file: ca.crt\n", "without a client_auth_type"),
    "client CA file missing": (TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: somefile\n",
                               "somefile: no such file"),
    "client CA not a certificate": (TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
                                    "  client_ca_file: server.key\n", "client CAs cannot be read"),
    "verify without CA": (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    "unverified client auth": (TLS + "  client_auth_type: RequireAnyClientCert\n", "is not supported"),
    "invalid client auth": (TLS + "  client_auth_type: Sometimes\n", "invalid ClientAuth 'Sometimes'"),
    "invented cipher": (TLS + "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n", "unknown cipher"),
    "invented curve": (TLS + "  curve_preferences: [CurveP257]\n", "unknown curve 'CurveP257'"),
    "curve list": (TLS + "  curve_preferences: [CurveP256, X25519]\n", "takes one curve"),
    "wrong TLS version": (TLS + "  min_version: TLS111\n", "unknown TLS version 'TLS111'"),
    "min above max": (TLS + "  min_version: TLS13\n  max_version: TLS12\n", "min_version is above max_version"),
    "password not hashed": (TLS + "basic_auth_users:\n  john: doe\n", "john's password is not a bcrypt hash"),
    "user with colon": (f"basic_auth_users:\n  'a:b': {HASH}\n", "is not a user name"),
    "hash cost out of range": ("basic_auth_users:\n  john: $2y$99$" + "a" * 53 + "\n", "not a bcrypt hash"),
    "content type options": ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
                             "invalid value for X-Content-Type-Options"),
    "frame options": ("http_server_config:\n  headers:\n    X-Frame-Options: foo\n", "invalid value for X-Frame-Options"),
    "extra header": ("http_server_config:\n  headers:\n    Content-Type: foo\n",
                     "HTTP header 'Content-Type' can not be configured"),
    "http2 not a boolean": ("http_server_config:\n  http2: sometimes\n", "http2 must be true or false"),
    "rate limit interval": ("rate_limit:\n  interval: soon\n  burst: 1\n", "rate_limit.interval"),
    "rate limit burst": ("rate_limit:\n  interval: 1s\n  burst: -1\n", "rate_limit.burst"),
}


@pytest.mark.parametrize("name", GOOD)
def test_good_files_load(pki, name):
    text, check = GOOD[name]
    cfg = webconfig.load(_write(pki, text))
    assert check(cfg), name


@pytest.mark.parametrize("name", BAD)
def test_bad_files_fail_with_one_line_naming_the_file(pki, name):
    text, expected = BAD[name]
    path = _write(pki, text)
    with pytest.raises(WebConfigError) as exc:
        webconfig.load(path)
    message = str(exc.value)
    assert expected in message, message
    assert message.startswith(f"web config file {path}: ") and "\n" not in message


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read it"):
        webconfig.load(tmp_path / "nope.yml")


def test_paths_are_relative_to_the_file_not_the_working_directory(pki, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # server.crt is not here
    assert webconfig.load(_write(pki, TLS)).tls is not None
