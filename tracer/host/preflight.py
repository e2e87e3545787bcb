"""Host preflight behind `tcpstate-tracer check`: can this machine run the tracer, and if not, why.

Each check is a small function that returns one CheckResult; a failure is one line
an operator can act on. Checks that cannot mean anything after an earlier failure
(no tracepoint lookup without tracefs, no program load unless everything before it
passed) are left out, while independent problems are all reported in one run, so
a fresh machine is fixed in one pass instead of one error at a time.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tracer.host import headers, tracefs

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
_CAP_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}

PROC_STATUS = Path("/proc/self/status")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
_AS_ROOT = "run as root (sudo tcpstate-tracer ...)"
_INSTALL_BCC = "install python3-bpfcc and run from the project's venv (make setup)"

# Substrings of BCC's load errors and what the operator can do about each; first match wins.
_PROGRAM_HINTS: tuple[tuple[str, str], ...] = (
    ("Operation not permitted",
     "the kernel refused BPF: run as root, check kernel.unprivileged_bpf_disabled / lockdown"),
    ("Permission denied",
     "the kernel or tracefs refused access: run as root, check kernel.unprivileged_bpf_disabled / lockdown"),
    ("Unable to find kernel headers",
     "BCC found no kernel headers: install them (make setup) or set BCC_KERNEL_SOURCE to a header tree"),
    ("Failed to compile",
     "BCC could not compile the program: read clang's errors above and check the headers check"),
    ("Failed to attach",
     "the tracepoints could not be attached: check that tracefs is mounted and perf_event_open is allowed"),
)
_DEFAULT_PROGRAM_HINT = "read BCC's output above and report it with `uname -r`"


@dataclass(frozen=True)
class CheckResult:
    name: str  # short id: privileges, bcc, tracefs, tracepoints, headers, program, blindspots
    ok: bool
    message: str  # ok: what was found; not ok: one line saying what failed, why, what to do
    warn: bool = False  # ok, the daemon runs, but it will not see everything


def _result(name: str, ok: bool, message: str, warn: bool = False) -> CheckResult:
    """Folds multi-line errors (BCC, cp) so every message stays one line."""
    return CheckResult(name, ok, " ".join(message.split()), warn)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def effective_capabilities(status_text: str | None) -> int | None:
    """The CapEff bit mask from /proc/<pid>/status text; None if absent or unreadable."""
    for line in (status_text or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def _has(capeff: int | None, cap: int) -> bool:
    return capeff is not None and bool(capeff >> cap & 1)


def check_privileges(euid: int, capeff: int | None) -> CheckResult:
    """Loading a tracing program needs CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN.

    The capability set decides, not the uid: root in a container can lack them, and a
    non-root service can be granted them.
    """
    if capeff is None:
        if euid == 0:
            return _result("privileges", True, "uid 0 (capabilities unreadable: /proc/self/status has no CapEff)")
        return _result("privileges", False,
                       f"uid {euid} and capabilities unreadable (/proc/self/status has no CapEff): {_AS_ROOT}")
    held = [name for cap, name in sorted(_CAP_NAMES.items(), reverse=True) if _has(capeff, cap)]
    if _has(capeff, CAP_SYS_ADMIN) or (_has(capeff, CAP_BPF) and _has(capeff, CAP_PERFMON)):
        return _result("privileges", True, f"uid {euid} with {', '.join(held)}")
    missing = " and ".join(_CAP_NAMES[cap] for cap in (CAP_BPF, CAP_PERFMON) if not _has(capeff, cap))
    if euid == 0:
        return _result("privileges", False,
                       f"running as root but without {missing} (or CAP_SYS_ADMIN), which loading BPF needs; "
                       "a container or service manager dropped them: grant CAP_BPF and CAP_PERFMON "
                       "(or CAP_SYS_ADMIN)")
    return _result("privileges", False,
                   f"uid {euid} lacks {missing} (or CAP_SYS_ADMIN), which loading BPF needs: {_AS_ROOT}")


def check_bcc() -> CheckResult:
    """BCC's Python module must be Debian's python3-bpfcc; the PyPI `bcc` is an unrelated library."""
    try:
        bcc = importlib.import_module("bcc")
    except (ImportError, OSError) as exc:  # OSError: the module is there but libbcc.so is not
        return _result("bcc", False, f"cannot import bcc ({exc}): {_INSTALL_BCC}")
    where = getattr(bcc, "__file__", None) or "?"
    if not hasattr(bcc, "BPF"):
        return _result("bcc", False,
                       f"the bcc module at {where} has no BPF class: it is not BCC (the PyPI package named "
                       f"bcc is an unrelated library); pip uninstall bcc, then {_INSTALL_BCC}")
    version = getattr(bcc, "__version__", "of unknown version")
    return _result("bcc", True, f"bcc {version} from {Path(where).parent}")


def tracefs_mounts(mountinfo_text: str | None) -> list[Path]:
    """Mount points of tracefs in /proc/self/mountinfo text (fields per proc(5))."""
    points = []
    for line in (mountinfo_text or "").splitlines():
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if sep and len(fields) >= 5 and after.split()[:1] == ["tracefs"]:
            # Spaces and the like are octal escapes (\040) in mountinfo.
            points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])))
    return points


def check_tracefs(root: Path | None, euid: int, can_mount: bool,
                  mountinfo_text: str | None = None) -> tuple[CheckResult, Path | None]:
    """Where tracefs is, mounting it when a fresh machine lacks it. Also returns the root to use.

    A given root (tests, odd layouts) is taken as is, so the tracepoints check can
    say what is missing under it.
    """
    if root is not None:
        if root.is_dir():
            return _result("tracefs", True, f"using {root} as tracefs (given)"), root
        return _result("tracefs", False,
                       f"the tracefs directory {root} does not exist: point at a mounted tracefs"), None
    try:
        found = tracefs.find()
    except tracefs.TracefsError as exc:  # tracefs is mode 0700: only root can even look inside
        return _result("tracefs", False, f"uid {euid}: {exc}"), None
    if found is not None:
        return _result("tracefs", True, f"tracefs mounted at {found}"), found
    if mountinfo_text is None:
        mountinfo_text = _read_text(PROC_MOUNTINFO)
    mounted = [p for p in tracefs_mounts(mountinfo_text) if p in (tracefs.MOUNT_POINT, tracefs.LEGACY)]
    if mounted:
        return _result("tracefs", False,
                       f"tracefs is mounted at {mounted[0]} but uid {euid} cannot read it: {_AS_ROOT}"), None
    if not can_mount:
        return _result("tracefs", False,
                       f"tracefs is not mounted at {tracefs.MOUNT_POINT} and mounting it needs CAP_SYS_ADMIN: "
                       f"{_AS_ROOT}, or mount it: mount -t tracefs nodev {tracefs.MOUNT_POINT}"), None
    try:
        target = tracefs.mount()
    except tracefs.TracefsError as exc:
        return _result("tracefs", False, str(exc)), None
    return _result("tracefs", True, f"tracefs was not mounted: mounted it at {target}"), target


def check_tracepoints(root: Path) -> CheckResult:
    """The program attaches to these tracepoints and nothing else: no kprobes or fentry,
    which kernels built without them or locked down refuse."""
    try:
        missing = tracefs.missing_tracepoints(root)
    except OSError as exc:
        return _result("tracepoints", False, f"cannot read {exc.filename} ({exc.strerror}): {_AS_ROOT}")
    if not missing:
        return _result("tracepoints", True, f"{', '.join(tracefs.TRACEPOINTS)} found under {root}/events")
    if not (root / "events").is_dir():
        return _result("tracepoints", False,
                       f"{root} has no events/ directory, so none of {', '.join(missing)}: it is not a "
                       f"mounted tracefs; mount one (mount -t tracefs nodev {tracefs.MOUNT_POINT})")
    return _result("tracepoints", False,
                   f"tracepoints missing under {root}/events: {', '.join(missing)}: this kernel lacks them "
                   "(they need Linux 4.16 or later with CONFIG_TRACEPOINTS, and CONFIG_FTRACE_SYSCALLS for the "
                   "syscalls/ ones); run on a newer kernel")


def check_headers(cache_dir: Path) -> CheckResult:
    """BCC compiles against a kernel header tree; prepare() also points BCC_KERNEL_SOURCE at it."""
    try:
        tree = headers.prepare(cache=cache_dir)
    except headers.HeadersError as exc:
        message = str(exc)
        if message.startswith("building"):
            message += f": give a writable cache directory (--cache-dir) instead of {cache_dir}, or run as root"
        return _result("headers", False, message)
    except OSError as exc:  # find() itself stats the cache; an unreadable one raises before any build
        return _result("headers", False,
                       f"cannot read the kernel header cache {exc.filename} ({exc.strerror}): give a readable "
                       f"cache directory (--cache-dir) instead of {cache_dir}, or run as root")
    return _result("headers", True, tree.how if tree is not None else "the running kernel's own headers")


def program_hint(message: str) -> str:
    """What to do about a BCC load error, matched on the kernel's or BCC's wording."""
    for needle, hint in _PROGRAM_HINTS:
        if needle in message:
            return hint
    return _DEFAULT_PROGRAM_HINT


@contextmanager
def _fd2_captured() -> Iterator[list[str]]:
    """Collects what libbcc and clang write to file descriptor 2, then writes it on.

    BCC's exception often says only "Failed to compile BPF module" while the cause
    (a map refused with EPERM, a clang error) went to stderr from C.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            captured.append(text)
            sys.stderr.write(text)
            sys.stderr.flush()


def _first_error_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[-1] if lines else None


def check_program() -> CheckResult:
    """Really compiles, loads and attaches the program: the only proof that `run` will start."""
    from tracer.sources.bcc import BccSource, SourceError  # noqa: PLC0415 (imports bcc's helpers lazily)

    started = time.perf_counter()
    elapsed = 0.0
    with _fd2_captured() as captured:
        try:
            source = BccSource(ringbuf_pages=16)
        except (SourceError, OSError) as exc:
            failure: str | None = str(exc).removesuffix(" (run `tcpstate-tracer check`)")
        else:
            failure = None
            elapsed = time.perf_counter() - started
            source.close()
    if failure is not None:
        detail = _first_error_line("".join(captured))
        if detail and detail not in failure:
            failure = f"{failure} ({detail})"
        return _result("program", False, f"{failure}: {program_hint(failure)}")
    return _result("program", True,
                   f"compiled, loaded and attached the program to its tracepoints in {elapsed:.2f} s")


def check_blindspots(seconds: float, root: Path | None) -> CheckResult:
    """Threads whose softirq work the kernel runs no BPF program for (a warning: the
    daemon runs, but transitions processed there are invisible to it)."""
    from tracer.host import blindspots  # noqa: PLC0415 (imports bcc lazily)

    message, warn = blindspots.summary(seconds, root)
    return _result("blindspots", True, message, warn=warn)


def run_checks(cache_dir: Path, tracefs_root: Path | None = None, load_program: bool = True,
               probe_s: float = 0.0) -> list[CheckResult]:
    """Every check in order: privileges, bcc, tracefs, tracepoints, headers, program,
    blindspots.

    tracepoints runs only when tracefs was found; program only when asked and every
    check before it passed; blindspots (``probe_s`` seconds) only when asked and the
    program loaded. The others always run.
    """
    euid = os.geteuid()
    capeff = effective_capabilities(_read_text(PROC_STATUS))
    can_mount = _has(capeff, CAP_SYS_ADMIN) if capeff is not None else euid == 0
    results = [check_privileges(euid, capeff), check_bcc()]
    tracefs_result, root = check_tracefs(tracefs_root, euid, can_mount)
    results.append(tracefs_result)
    if root is not None:
        results.append(check_tracepoints(root))
    results.append(check_headers(cache_dir))
    if load_program and root is not None and all(r.ok for r in results):
        results.append(check_program())
        if probe_s > 0 and results[-1].ok:
            results.append(check_blindspots(probe_s, root))
    return results
