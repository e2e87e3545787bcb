"""`--web.config.file`: TLS, basic authentication and response headers, in the
exporter-toolkit's web-config format (prometheus/exporter-toolkit,
docs/web-configuration.md), so that one file serves node_exporter and this daemon.

The toolkit's semantics are kept: an unknown key is an error at start; paths are
relative to the file; a TLS section needs a certificate and a key (in a file or
inline); client CAs without a client-auth policy are an error; users' passwords are
bcrypt hashes; only the toolkit's five headers may be set, the enumerated ones to
their values. Where Python's TLS cannot do what Go's does, the file is refused with
the reason rather than served differently: a client certificate is always verified
when one is asked for (no RequestClientCert, RequireAnyClientCert), and one ECDH
curve may be chosen, not an ordered list.

One key is this daemon's own: ``http_server_config.open_probes: true`` leaves
/healthz and /readyz without authentication, for probes that carry no credentials.
"""

from __future__ import annotations

import re
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tracer.config import Duration


class WebConfigError(ValueError):
    """The file cannot be served as written (one line, naming the file)."""


TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's names (crypto/tls CipherSuites()) to OpenSSL's. TLS 1.3's suites are accepted and
# change nothing, as in Go: cipher_suites applies up to TLS 1.2.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
CLIENT_AUTH = {"": ssl.CERT_NONE, "NoClientCert": ssl.CERT_NONE,
               "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# The toolkit's headers (web/handler.go extraHTTPHeaders): None, any value.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
# $2a$, $2b$, $2y$ (htpasswd -B), a two-digit cost, 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

_KEYS = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"},
    "tls_server_config": {"cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
                          "client_ca_file", "client_allowed_sans", "min_version", "max_version",
                          "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"},
    "http_server_config": {"http2", "headers", "open_probes"},
    "rate_limit": {"interval", "burst"},
}


@dataclass(frozen=True)
class TlsConfig:
    context: ssl.SSLContext
    certificate: str = ""  # the server's certificate chain (PEM), for a client that must trust it
    client_allowed_sans: tuple[str, ...] = ()  # checked once a client certificate is verified


@dataclass(frozen=True)
class RateLimit:
    interval_s: float  # one request each interval on average...
    burst: int  # ...and this many at once


@dataclass(frozen=True)
class WebConfig:
    path: Path | None = None
    tls: TlsConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    open_probes: bool = False
    rate_limit: RateLimit | None = None

    @property
    def authenticates(self) -> bool:
        return bool(self.users) or (self.tls is not None and self.tls.context.verify_mode == ssl.CERT_REQUIRED)


def load(path: Path) -> WebConfig:
    """Reads and checks the file; WebConfigError says what is wrong, naming the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"web config file {path}: cannot read it ({exc.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise WebConfigError(f"web config file {path}: not valid YAML"
                             + (f" at line {mark.line + 1}" if mark else "")) from None
    try:
        return _build(path, {} if tree is None else tree)
    except _Bad as exc:
        raise WebConfigError(f"web config file {path}: {exc}") from None


class _Bad(ValueError):
    pass


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"{where or 'the file'} must be a mapping of keys")
    unknown = sorted(str(k) for k in value if k not in _KEYS[where])
    if unknown:
        raise _Bad(f"unknown key {(where + '.' if where else '') + unknown[0]!r} "
                   f"(known: {', '.join(sorted(_KEYS[where]))})")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{where} must be a string")
    return value


def _list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{where} must be a list of strings")
    return value


def _bool(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Bad(f"{where} must be true or false")
    return value


def _build(path: Path, tree: Any) -> WebConfig:
    if not isinstance(tree, dict):
        raise _Bad("must be a mapping of keys (tls_server_config, http_server_config, basic_auth_users)")
    top = _mapping(tree, "")
    base = path.parent
    tls_tree = _mapping(top.get("tls_server_config"), "tls_server_config")
    http = _mapping(top.get("http_server_config"), "http_server_config")
    _bool(http.get("http2"), "http_server_config.http2", True)  # HTTP/1.1 is served either way
    return WebConfig(
        path=path,
        tls=_tls(tls_tree, base) if _tls_enabled(tls_tree) else None,
        users=_users(top.get("basic_auth_users")),
        headers=_headers(http.get("headers")),
        open_probes=_bool(http.get("open_probes"), "http_server_config.open_probes", False),
        rate_limit=_rate_limit(_mapping(top.get("rate_limit"), "rate_limit")))


def _tls_enabled(t: dict) -> bool:  # the toolkit's TLSConfig.IsEnabled
    return any(t.get(k) for k in ("cert", "key", "cert_file", "key_file", "client_ca", "client_ca_file",
                                  "client_auth_type"))


def _file(base: Path, value: Any, where: str) -> Path | None:
    text = _text(value, f"tls_server_config.{where}")
    if not text:
        return None
    p = Path(text)
    return p if p.is_absolute() else base / p


def _tls(t: dict, base: Path) -> TlsConfig:
    cert_file, key_file = _file(base, t.get("cert_file"), "cert_file"), _file(base, t.get("key_file"), "key_file")
    cert, key = _text(t.get("cert"), "tls_server_config.cert"), _text(t.get("key"), "tls_server_config.key")
    if cert_file is None and not cert:
        raise _Bad("tls_server_config: missing one of cert or cert_file")
    if key_file is None and not key:
        raise _Bad("tls_server_config: missing one of key or key_file")
    if (cert_file and cert) or (key_file and key):
        raise _Bad("tls_server_config: give the certificate and the key either inline or as files, not both")
    auth = _text(t.get("client_auth_type"), "tls_server_config.client_auth_type")
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise _Bad(f"tls_server_config.client_auth_type {auth} is not supported: this daemon's TLS (Python's ssl) "
                   "verifies every client certificate it asks for; use VerifyClientCertIfGiven or "
                   "RequireAndVerifyClientCert with client_ca_file")
    if auth not in CLIENT_AUTH:
        raise _Bad(f"tls_server_config.client_auth_type: invalid ClientAuth {auth!r} (one of NoClientCert, "
                   "VerifyClientCertIfGiven, RequireAndVerifyClientCert)")
    ca_file = _file(base, t.get("client_ca_file"), "client_ca_file")
    ca = _text(t.get("client_ca"), "tls_server_config.client_ca")
    if (ca_file or ca) and CLIENT_AUTH[auth] == ssl.CERT_NONE:
        raise _Bad("tls_server_config: client CAs have been configured without a client_auth_type")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE and not (ca_file or ca):
        raise _Bad(f"tls_server_config: client_auth_type {auth} needs client_ca_file (or client_ca): "
                   "the CAs client certificates are verified against")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(t.get("min_version"), "min_version", "TLS12")
    ctx.maximum_version = _version(t.get("max_version"), "max_version", "TLS13")
    if ctx.minimum_version > ctx.maximum_version:
        raise _Bad("tls_server_config: min_version is above max_version")
    _load_chain(ctx, cert_file, key_file, cert, key)
    ctx.verify_mode = CLIENT_AUTH[auth]
    if ca_file or ca:
        try:
            ctx.load_verify_locations(cafile=str(ca_file) if ca_file else None, cadata=ca or None)
        except FileNotFoundError:
            raise _Bad(f"tls_server_config.client_ca_file {ca_file}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise _Bad(f"tls_server_config: the client CAs cannot be read ({_reason(exc)})") from None
    suites = _list(t.get("cipher_suites"), "tls_server_config.cipher_suites")
    unknown = [s for s in suites if s not in CIPHERS]
    if unknown:
        raise _Bad(f"tls_server_config.cipher_suites: unknown cipher {unknown[0]!r}")
    openssl = [CIPHERS[s] for s in suites if CIPHERS[s]]
    if openssl:
        ctx.set_ciphers(":".join(openssl))
    if _bool(t.get("prefer_server_cipher_suites"), "tls_server_config.prefer_server_cipher_suites", True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = _list(t.get("curve_preferences"), "tls_server_config.curve_preferences")
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        raise _Bad(f"tls_server_config.curve_preferences: unknown curve {unknown[0]!r} (one of {', '.join(CURVES)})")
    if len(curves) > 1:
        raise _Bad("tls_server_config.curve_preferences: this daemon's TLS (Python's ssl) takes one curve, "
                   f"not an ordered list of {len(curves)}; give one, or none for OpenSSL's defaults")
    if curves:
        ctx.set_ecdh_curve(CURVES[curves[0]])
    return TlsConfig(ctx, cert or cert_file.read_text(),
                     tuple(_list(t.get("client_allowed_sans"), "tls_server_config.client_allowed_sans")))


def _version(value: Any, where: str, default: str) -> ssl.TLSVersion:
    text = _text(value, f"tls_server_config.{where}") or default
    if text not in TLS_VERSIONS:
        raise _Bad(f"tls_server_config.{where}: unknown TLS version {text!r} (one of {', '.join(TLS_VERSIONS)})")
    return TLS_VERSIONS[text]


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _load_chain(ctx: ssl.SSLContext, cert_file: Path | None, key_file: Path | None, cert: str, key: str) -> None:
    for p, what in ((cert_file, "cert_file"), (key_file, "key_file")):
        if p is not None and not p.is_file():
            raise _Bad(f"tls_server_config.{what} {p}: no such file")
    # Inline PEM goes through a private temporary file: load_cert_chain reads only files.
    with tempfile.TemporaryDirectory(prefix="tcpstate-tls-") as tmp:
        if cert:
            cert_file = Path(tmp) / "cert.pem"
            cert_file.write_text(cert)
        if key:
            key_file = Path(tmp) / "key.pem"
            key_file.touch(0o600)
            key_file.write_text(key)
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file))
        except (ssl.SSLError, OSError) as exc:
            raise _Bad(f"tls_server_config: failed to load the certificate and key ({_reason(exc)})") from None


def _users(value: Any) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("basic_auth_users must map user names to bcrypt hashes")
    users = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _Bad(f"basic_auth_users: {user!r} is not a user name (a non-empty string without ':')")
        match = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise _Bad(f"basic_auth_users: {user}'s password is not a bcrypt hash "
                       "(make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        users[user] = hashed.encode()
    return users


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("http_server_config.headers must map header names to values")
    headers = {}
    for name, text in value.items():
        if name not in HEADERS:
            raise _Bad(f"http_server_config.headers: HTTP header {name!r} can not be configured "
                       f"(one of {', '.join(HEADERS)})")
        text = "" if text is None else str(text)
        allowed = HEADERS[name]
        if allowed is not None and text not in allowed:
            raise _Bad(f"http_server_config.headers: invalid value for {name}: expected one of "
                       f"{', '.join(allowed)}, but got {text!r}")
        if "\n" in text or "\r" in text:
            raise _Bad(f"http_server_config.headers: {name} must be one line")
        headers[name] = text  # blank: unset
    return headers


def _rate_limit(r: dict) -> RateLimit | None:
    if not r:
        return None
    raw = r.get("interval", 0)
    try:
        interval = float(Duration.parse(raw)) if isinstance(raw, str) else float(raw)
        if isinstance(raw, bool) or interval < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise _Bad(f"rate_limit.interval: {raw!r} is not a duration (as in 1s, 100ms)") from None
    burst = r.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise _Bad(f"rate_limit.burst: {burst!r} is not a whole number of requests")
    return RateLimit(interval, burst) if interval > 0 else None
