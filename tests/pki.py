"""Certificates for the TLS tests, made with Debian's openssl at test time (nothing
generated is committed): a CA, a server certificate it signs for localhost and
127.0.0.1, a client certificate it signs (SAN DNS:client-one), and a client
certificate signed by nobody."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # self-signed: no CA of ours vouches for it
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {done.stderr.strip()}")


def make(into: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("the TLS tests need Debian's openssl")
    into.mkdir(parents=True, exist_ok=True)
    rsa = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *rsa, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=tcpstate test CA",
             "-days", "3", cwd=into)
    for name, cn, san in (("server", "localhost", "DNS:localhost,IP:127.0.0.1"),
                          ("client", "client-one", "DNS:client-one")):
        _openssl("req", *rsa, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=into)
        (into / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "3", "-extfile", f"{name}.ext", cwd=into)
    _openssl("req", "-x509", *rsa, "-keyout", "stranger.key", "-out", "stranger.crt", "-subj", "/CN=client-one",
             "-addext", "subjectAltName=DNS:client-one", "-days", "3", cwd=into)
    return Pki(into, into / "ca.crt", into / "server.crt", into / "server.key", into / "client.crt",
               into / "client.key", into / "stranger.crt", into / "stranger.key")
