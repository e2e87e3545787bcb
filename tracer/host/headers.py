"""Kernel headers for BCC when the running kernel has none.

BCC compiles the program against a kernel header tree and refuses to start without
one. The program reads no kernel struct through a header definition, so the
distribution's headers of another version serve. Debian splits them into a
``-common`` tree and an arch tree; BCC needs them merged. The merged tree is a tree
of symlinks built once under a cache directory, and handed to BCC through
BCC_KERNEL_SOURCE; /lib/modules is never touched.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/tcpstate-tracer")
# Debian's header trees the container image carries (deploy/container/Containerfile), for
# nodes that have no headers of their own: a DaemonSet mounts the host's /usr/src over
# the image's, so the image keeps its trees here, looked at after the host's.
BUNDLED = Path("/opt/tcpstate-tracer/kernel-headers")
_MARKER = ".tcpstate-tracer-complete"


class HeadersError(RuntimeError):
    pass


@dataclass(frozen=True)
class HeaderTree:
    path: Path
    how: str  # what was found or built, for logs and `check`


def _version_key(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def _distribution_trees(src: Path) -> list[tuple[Path, Path]]:
    """(common, arch) pairs of installed Debian header trees, newest first."""
    pairs = []
    for common in src.glob("linux-headers-*-common"):
        stem = common.name[: -len("-common")]
        flavours = sorted(p for p in src.glob(stem + "-*") if p != common and (p / "include").is_dir())
        # The plain arch flavour (-amd64) before -cloud-amd64 or -rt-amd64.
        flavours.sort(key=lambda p: p.name.count("-"))
        if flavours and (common / "include").is_dir():
            pairs.append((common, flavours[0]))
    pairs.sort(key=lambda pair: _version_key(pair[0].name), reverse=True)
    return pairs


def find(release: str | None = None, modules: Path = Path("/lib/modules"),
         src: Path = Path("/usr/src"), kheaders: Path = Path("/sys/kernel/kheaders.tar.xz"),
         cache: Path = DEFAULT_CACHE, build: bool = True, bundled: Path = BUNDLED) -> HeaderTree | None:
    """The header tree BCC will use, building a merged one when that is the only way.

    None means BCC finds headers by itself (the running kernel's own, or its
    built-in kheaders archive). HeadersError says what to install.
    """
    release = release or platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        if (Path(env) / "include").is_dir():
            return HeaderTree(Path(env), f"BCC_KERNEL_SOURCE={env}")
        raise HeadersError(f"BCC_KERNEL_SOURCE={env} has no include/ directory: unset it or point it at a kernel header tree")
    own = modules / release / "build"
    if (own / "include").is_dir():
        return None
    if kheaders.exists():
        return None
    pairs = _distribution_trees(src) or _distribution_trees(bundled)
    if not pairs:
        raise HeadersError(
            f"no kernel headers for {release} and no distribution headers in {src}: "
            "install them (apt-get install linux-headers-amd64, or run `make setup`)")
    common, arch = pairs[0]
    target = cache / "kernel-headers" / arch.name
    how = (f"merged {common.name} and {arch.name} from {common.parent} at {target} "
           f"(no headers for the running kernel {release})")
    if (target / _MARKER).exists():
        return HeaderTree(target, how)
    if not build:
        return HeaderTree(target, how + "; not built yet")
    _merge(common, arch, target)
    log.info("kernel headers: %s", how)
    return HeaderTree(target, how)


def _merge(common: Path, arch: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        # cp -as copies the tree as symlinks; the arch tree's files win.
        subprocess.run(["cp", "-as", f"{common}/", str(tmp)], check=True, capture_output=True, text=True)
        subprocess.run(["cp", "-asf", f"{arch}/.", str(tmp)], check=True, capture_output=True, text=True)
        (tmp / _MARKER).write_text(f"{common}\n{arch}\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise HeadersError(f"building a kernel header tree at {target} failed: {detail.strip()}") from None


def prepare(cache: Path = DEFAULT_CACHE) -> HeaderTree | None:
    """Finds or builds the header tree and points BCC at it."""
    try:
        tree = find(cache=cache)
    except PermissionError as exc:
        raise HeadersError(f"kernel headers: cannot use {exc.filename}: permission denied "
                           "(run as root, or choose another --cache-dir)") from None
    if tree is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(tree.path)
    return tree
