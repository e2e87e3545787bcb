"""What every response goes through, in front of the Flask app: the methods served
(GET and HEAD), the rate limit, basic authentication and the security headers.

It wraps the WSGI app whole, so /metrics, the API, the event stream, the page and
its assets are guarded alike, and a 401, 405 or 429 carries the same headers as a
200. Errors are JSON, as the API's are.

Authentication follows the exporter-toolkit (web/handler.go), CVE-2022-46146 among
the lessons: an unknown user is checked against a dummy hash of the same cost, so a
wrong password and an unknown user cost the same; a verified answer is cached under
a keyed digest of user, hash and password together (never the password itself, and
never the hash alone), and only a known user's match passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable

import bcrypt

from tracer.web.webconfig import RateLimit, WebConfig

log = logging.getLogger(__name__)

METHODS = ("GET", "HEAD")
PROBES = ("/healthz", "/readyz")
# What the page needs and no more: its own scripts, styles and API; never framed.
DEFAULT_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
}
BCRYPT_MAX_BYTES = 72  # bcrypt 5.0 refuses longer passwords; such a password is wrong, not an error
CACHE_SIZE = 100


class TokenBucket:
    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.burst, self.clock = limit.interval_s, limit.burst, clock
        self._tokens, self._at = float(limit.burst), clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class BasicAuth:
    """Checks an Authorization header against the file's users."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        costs = sorted(int(h.split(b"$")[2]) for h in users.values())
        cost = costs[len(costs) // 2] if costs else 10
        # An unknown user's password is checked against this, at the users' usual cost.
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
        self._key = os.urandom(32)  # the cache's keys mean nothing outside this process
        self._cache: dict[bytes, bool] = {}
        self._lock = threading.Lock()  # one bcrypt at a time: it is meant to be slow
        self.checks = 0  # bcrypt comparisons made (the cache's misses)

    def verify(self, header: str | None) -> str | None:
        """The user an ``Authorization: Basic`` header proves, or None."""
        if not header or not header[:6].lower() == "basic ":
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        known = user in self.users
        hashed = self.users.get(user, self._dummy)
        pw = password.encode()
        key = hmac.new(self._key, b"\0".join((user.encode(), hashed, pw)), hashlib.sha256).digest()
        with self._lock:
            ok = self._cache.get(key)
            if ok is None:
                self.checks += 1
                if len(pw) > BCRYPT_MAX_BYTES:  # the same work, then no
                    bcrypt.checkpw(pw[:BCRYPT_MAX_BYTES], hashed)
                    ok = False
                else:
                    ok = bcrypt.checkpw(pw, hashed)
                ok = ok and known
                if len(self._cache) >= CACHE_SIZE:
                    del self._cache[random.choice(list(self._cache))]
                self._cache[key] = ok
        return user if ok and known else None


def _json(start_response, status: str, message: str, headers: list[tuple[str, str]]) -> list[bytes]:
    code = int(status.split()[0])
    body = json.dumps({"error": message, "status": code}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + headers)
    return [body]


class Guard:
    """WSGI middleware: ``Guard(app, web_config)``."""

    def __init__(self, app: Callable, config: WebConfig | None = None) -> None:
        config = config or WebConfig()
        self.app = app
        merged = DEFAULT_HEADERS | config.headers  # the file's win; a blank one is unset
        self.headers = [(k, v) for k, v in merged.items() if v]
        self.auth = BasicAuth(config.users) if config.users else None
        self.open_probes = config.open_probes
        self.bucket = TokenBucket(config.rate_limit) if config.rate_limit else None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in METHODS:
            return _json(start_response, "405 Method Not Allowed", f"method {method} not allowed: GET or HEAD",
                         [("Allow", ", ".join(METHODS))] + self.headers)
        if self.bucket is not None and not self.bucket.allow():
            return _json(start_response, "429 Too Many Requests", "too many requests", self.headers)
        if self.auth is not None and not (self.open_probes and environ.get("PATH_INFO") in PROBES):
            if self.auth.verify(environ.get("HTTP_AUTHORIZATION")) is None:
                return _json(start_response, "401 Unauthorized", "unauthorized",
                             [("WWW-Authenticate", 'Basic realm="tcpstate-tracer", charset="UTF-8"')]
                             + self.headers)

        def with_headers(status, headers, exc_info=None):
            names = {k.lower() for k, _ in headers}
            return start_response(status, headers + [(k, v) for k, v in self.headers if k.lower() not in names],
                                  exc_info)

        return self.app(environ, with_headers)
