"""tracer/preflight.py without the kernel: parsing, messages, and which checks run after a failure."""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

import pytest

from tracer.host import headers, preflight, tracefs
from tracer.host.preflight import CheckResult

# CapEff of root on the project's machines: everything but CAP_SYS_RESOURCE (24).
ROOT_CAPS = 0x000001FFFEFFFFFF
BPF = 1 << preflight.CAP_BPF
PERFMON = 1 << preflight.CAP_PERFMON
SYS_ADMIN = 1 << preflight.CAP_SYS_ADMIN

STATUS = """Name:\tpython3
Uid:\t0\t0\t0\t0
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t{capeff}
CapBnd:\t000001fffeffffff
"""


def _one_line(result: CheckResult) -> None:
    assert "\n" not in result.message and result.message.strip() == result.message


@pytest.mark.parametrize(("text", "expected"), [
    (STATUS.format(capeff="000001fffeffffff"), ROOT_CAPS),
    (STATUS.format(capeff="0000000000000000"), 0),
    (STATUS.format(capeff="000000c000000000"), BPF | PERFMON),
    (STATUS.format(capeff="not-hex"), None),
    ("Name:\tpython3\nCapPrm:\t0000000000000000\n", None),  # no CapEff line at all
    ("", None),
    (None, None),  # /proc/self/status unreadable
])
def test_effective_capabilities(text: str | None, expected: int | None) -> None:
    assert preflight.effective_capabilities(text) == expected


@pytest.mark.parametrize(("euid", "capeff", "ok", "wanted"), [
    (0, ROOT_CAPS, True, ["uid 0", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]),
    (1000, BPF | PERFMON, True, ["uid 1000 with CAP_BPF, CAP_PERFMON"]),
    (1000, SYS_ADMIN, True, ["uid 1000 with CAP_SYS_ADMIN"]),
    (65534, 0, False, ["uid 65534 lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                       "run as root (sudo tcpstate-tracer ...)"]),
    (1000, BPF, False, ["lacks CAP_PERFMON (or CAP_SYS_ADMIN)", "run as root"]),
    (1000, PERFMON, False, ["lacks CAP_BPF (or CAP_SYS_ADMIN)", "run as root"]),
    (0, ROOT_CAPS & ~(BPF | PERFMON | SYS_ADMIN), False,
     ["running as root but without CAP_BPF and CAP_PERFMON", "grant CAP_BPF and CAP_PERFMON"]),
    (0, None, True, ["uid 0", "capabilities unreadable"]),
    (1000, None, False, ["capabilities unreadable", "run as root"]),
])
def test_check_privileges(euid: int, capeff: int | None, ok: bool, wanted: list[str]) -> None:
    result = preflight.check_privileges(euid, capeff)
    assert (result.name, result.ok) == ("privileges", ok)
    for text in wanted:
        assert text in result.message
    _one_line(result)


@pytest.mark.parametrize(("module", "ok", "wanted"), [
    (None, False, ["cannot import bcc", "install python3-bpfcc and run from the project's venv (make setup)"]),
    (types.SimpleNamespace(__file__="/venv/site-packages/bcc/__init__.py"), False,
     ["/venv/site-packages/bcc/__init__.py has no BPF class", "unrelated library", "pip uninstall bcc",
      "install python3-bpfcc"]),
    (types.SimpleNamespace(__file__="/usr/lib/python3/dist-packages/bcc/__init__.py", __version__="0.26.0",
                           BPF=object), True, ["bcc 0.26.0 from /usr/lib/python3/dist-packages/bcc"]),
])
def test_check_bcc(monkeypatch: pytest.MonkeyPatch, module: object, ok: bool, wanted: list[str]) -> None:
    # None in sys.modules makes `import bcc` raise ImportError, as on a host without it.
    monkeypatch.setitem(sys.modules, "bcc", module)
    result = preflight.check_bcc()
    assert (result.name, result.ok) == ("bcc", ok)
    for text in wanted:
        assert text in result.message
    _one_line(result)


@pytest.mark.parametrize(("mountinfo", "expected"), [
    ("42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n", [Path("/sys/kernel/tracing")]),
    ("22 1 0:21 / /sys rw - sysfs sysfs rw\n"
     "30 22 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n"
     "31 30 0:13 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n", [Path("/sys/kernel/debug/tracing")]),
    ("50 1 0:13 / /mnt/trace\\040fs rw shared:5 - tracefs nodev rw\n", [Path("/mnt/trace fs")]),
    ("22 1 0:21 / /sys rw - sysfs sysfs rw\n", []),
    (None, []),
])
def test_tracefs_mounts(mountinfo: str | None, expected: list[Path]) -> None:
    assert preflight.tracefs_mounts(mountinfo) == expected


def test_check_tracefs_given_root(tmp_path: Path) -> None:
    result, root = preflight.check_tracefs(tmp_path, euid=0, can_mount=True)
    assert result.ok and root == tmp_path and str(tmp_path) in result.message

    result, root = preflight.check_tracefs(tmp_path / "absent", euid=0, can_mount=True)
    assert not result.ok and root is None and "does not exist" in result.message


def _mount_fails(target: Path = tracefs.MOUNT_POINT) -> Path:
    raise tracefs.TracefsError(f"mounting tracefs at {target} failed: Operation not permitted (run as root)")


def _find_denied(root: Path | None = None) -> Path | None:
    raise tracefs.TracefsError("cannot read /sys/kernel/tracing: permission denied (run as root)")


MOUNTED = "42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n"


@pytest.mark.parametrize(("find", "mountinfo", "can_mount", "mount", "ok", "wanted"), [
    (lambda root=None: Path("/sys/kernel/tracing"), "", False, None, True,
     "tracefs mounted at /sys/kernel/tracing"),
    (_find_denied, MOUNTED, False, None, False,
     "uid 65534: cannot read /sys/kernel/tracing: permission denied (run as root)"),
    (lambda root=None: None, MOUNTED, False, None, False,
     "mounted at /sys/kernel/tracing but uid 65534 cannot read it: run as root"),
    (lambda root=None: None, "", False, None, False,
     "not mounted at /sys/kernel/tracing and mounting it needs CAP_SYS_ADMIN"),
    (lambda root=None: None, "", True, _mount_fails, False,
     "mounting tracefs at /sys/kernel/tracing failed: Operation not permitted"),
    (lambda root=None: None, "", True, lambda target=tracefs.MOUNT_POINT: target, True,
     "tracefs was not mounted: mounted it at /sys/kernel/tracing"),
])
def test_check_tracefs_finds_or_mounts(monkeypatch: pytest.MonkeyPatch, find, mountinfo: str,
                                       can_mount: bool, mount, ok: bool, wanted: str) -> None:
    monkeypatch.setattr(tracefs, "find", find)
    monkeypatch.setattr(tracefs, "mount", mount or _unexpected("mount"))
    result, root = preflight.check_tracefs(None, euid=0 if ok else 65534, can_mount=can_mount,
                                           mountinfo_text=mountinfo)
    assert (result.name, result.ok, root is not None) == ("tracefs", ok, ok)
    assert wanted in result.message
    _one_line(result)


def _unexpected(name: str):
    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} must not be called here")
    return called


def _tracefs_tree(root: Path, tracepoints: list[str]) -> Path:
    (root / "events").mkdir(parents=True, exist_ok=True)
    for tp in tracepoints:
        (root / "events" / tp).mkdir(parents=True)
        (root / "events" / tp / "format").write_text("name: x\n")
    return root


@pytest.mark.parametrize(("present", "ok", "wanted"), [
    (None, False, ["has no events/ directory", "sock/inet_sock_set_state, tcp/tcp_receive_reset, "
                   "tcp/tcp_send_reset", "mount -t tracefs nodev /sys/kernel/tracing"]),
    ([], False, ["tracepoints missing under", "sock/inet_sock_set_state", "Linux 4.16"]),
    (["sock/inet_sock_set_state"], False, ["missing under", ": tcp/tcp_receive_reset, tcp/tcp_send_reset, "
                                           "tcp/tcp_retransmit_skb,"]),
    (list(tracefs.TRACEPOINTS[:5]), False,
     ["missing under", ": syscalls/sys_enter_socket, syscalls/sys_exit_socket", "CONFIG_FTRACE_SYSCALLS"]),
    (list(tracefs.TRACEPOINTS), True, ["sock/inet_sock_set_state, tcp/tcp_receive_reset, tcp/tcp_send_reset, "
                                       "tcp/tcp_retransmit_skb", "sys_exit_shutdown found under"]),
])
def test_check_tracepoints(tmp_path: Path, present: list[str] | None, ok: bool, wanted: list[str]) -> None:
    root = tmp_path if present is None else _tracefs_tree(tmp_path, present)
    result = preflight.check_tracepoints(root)
    assert (result.name, result.ok) == ("tracepoints", ok)
    for text in wanted:
        assert text in result.message
    _one_line(result)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake host for headers.find: no modules, no kheaders, /usr/src in tmp; BCC_KERNEL_SOURCE restored after."""
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(headers, "find", functools.partial(
        headers.find, release="6.18.0-test", modules=tmp_path / "modules", src=src,
        kheaders=tmp_path / "kheaders.tar.xz", bundled=tmp_path / "bundled"))
    return src


def test_check_headers_without_any_tree(host: Path, tmp_path: Path) -> None:
    result = preflight.check_headers(tmp_path / "cache")
    assert (result.name, result.ok) == ("headers", False)
    assert f"no kernel headers for 6.18.0-test and no distribution headers in {host}" in result.message
    assert "install them (apt-get install linux-headers-amd64, or run `make setup`)" in result.message
    assert "BCC_KERNEL_SOURCE" not in os.environ
    _one_line(result)


def _debian_headers(src: Path) -> None:
    for tree in ("linux-headers-6.1.0-9-common", "linux-headers-6.1.0-9-amd64"):
        (src / tree / "include" / "linux").mkdir(parents=True)
        (src / tree / "include" / "linux" / f"{tree}.h").write_text("/* */\n")


def test_check_headers_merges_a_tree_and_points_bcc_at_it(host: Path, tmp_path: Path) -> None:
    _debian_headers(host)
    result = preflight.check_headers(tmp_path / "cache")
    tree = tmp_path / "cache" / "kernel-headers" / "linux-headers-6.1.0-9-amd64"
    assert result.ok, result.message
    assert result.message.startswith("merged linux-headers-6.1.0-9-common and linux-headers-6.1.0-9-amd64")
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tree)
    assert (tree / "include" / "linux" / "linux-headers-6.1.0-9-common.h").exists()


def test_the_images_own_trees_serve_where_the_host_has_none(host: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In the container image, the host's /usr/src (mounted over the image's) comes first,
    and the trees the image carries serve only where the host has none."""
    bundled = tmp_path / "bundled"
    _debian_headers(bundled)
    result = preflight.check_headers(tmp_path / "cache")
    assert result.ok, result.message
    tree = Path(os.environ["BCC_KERNEL_SOURCE"])
    assert (tree / "include" / "linux" / "linux-headers-6.1.0-9-amd64.h").resolve().is_relative_to(bundled)
    assert f"linux-headers-6.1.0-9-amd64 from {bundled} at" in result.message

    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    for name in ("linux-headers-6.12.0-1-common", "linux-headers-6.12.0-1-amd64"):
        (host / name / "include").mkdir(parents=True)
    assert preflight.check_headers(tmp_path / "cache2").message.startswith(
        "merged linux-headers-6.12.0-1-common and linux-headers-6.12.0-1-amd64")


def test_check_headers_build_failure_says_what_to_do(host: Path, tmp_path: Path) -> None:
    _debian_headers(host)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    result = preflight.check_headers(not_a_dir)
    assert not result.ok
    assert result.message.startswith("building a kernel header tree at")
    assert f"give a writable cache directory (--cache-dir) instead of {not_a_dir}" in result.message
    _one_line(result)


def test_check_headers_bad_bcc_kernel_source(host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "nowhere"))
    result = preflight.check_headers(tmp_path / "cache")
    assert not result.ok and "has no include/ directory: unset it" in result.message


def test_check_headers_running_kernels_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modules" / "6.18.0-test" / "build" / "include").mkdir(parents=True)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(headers, "find", functools.partial(
        headers.find, release="6.18.0-test", modules=tmp_path / "modules", src=tmp_path))
    result = preflight.check_headers(tmp_path / "cache")
    assert result == CheckResult("headers", True, "the running kernel's own headers")
    assert "BCC_KERNEL_SOURCE" not in os.environ


@pytest.mark.parametrize(("message", "hint"), [
    ("loading tcpstates.bpf.c failed: Failed to load BPF program b'x': Operation not permitted",
     "the kernel refused BPF: run as root, check kernel.unprivileged_bpf_disabled / lockdown"),
    ("loading tcpstates.bpf.c failed: Failed to compile BPF module b'x' (could not open bpf map: stats, "
     "error: Operation not permitted)", "the kernel refused BPF"),
    ("loading tcpstates.bpf.c failed: Failed to compile BPF module b'x' (error: unknown type name 'u64')",
     "read clang's errors above"),
    ("loading tcpstates.bpf.c failed: Unable to find kernel headers.", "install them (make setup)"),
    ("loading tcpstates.bpf.c failed: Failed to attach BPF program b'x' to tracepoint b'sock:y'",
     "could not be attached"),
    ("loading tcpstates.bpf.c failed: Permission denied", "run as root"),
    ("something new", "read BCC's output above"),
])
def test_program_hint(message: str, hint: str) -> None:
    assert hint in preflight.program_hint(message)


def _fake_source(monkeypatch: pytest.MonkeyPatch, stderr: bytes, error: str | None) -> list[str]:
    """Stands in for BccSource: writes to fd 2 as libbcc does, then fails or succeeds."""
    from tracer.sources import bcc as bcc_source

    calls: list[str] = []

    class FakeSource:
        def __init__(self, ringbuf_pages: int) -> None:
            calls.append(f"init {ringbuf_pages}")
            os.write(2, stderr)
            if error is not None:
                raise bcc_source.SourceError(error)

        def close(self) -> None:
            calls.append("close")

    monkeypatch.setattr(bcc_source, "BccSource", FakeSource)
    return calls


def test_check_program_names_the_cause_bcc_only_printed(monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    calls = _fake_source(monkeypatch, b"could not open bpf map: stats, error: Operation not permitted\n",
                         "loading tcpstates.bpf.c failed: Failed to compile BPF module b'x' "
                         "(run `tcpstate-tracer check`)")
    result = preflight.check_program()
    assert calls == ["init 16"]
    assert not result.ok
    assert result.message == (
        "loading tcpstates.bpf.c failed: Failed to compile BPF module b'x' (could not open bpf map: stats, "
        "error: Operation not permitted): the kernel refused BPF: run as root, check "
        "kernel.unprivileged_bpf_disabled / lockdown")
    # What libbcc printed is still shown to the operator, not swallowed.
    assert "could not open bpf map" in capfd.readouterr().err


def test_check_program_reports_load_time_and_unloads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_source(monkeypatch, b"", None)
    result = preflight.check_program()
    assert calls == ["init 16", "close"]
    assert result.ok and result.message.startswith("compiled, loaded and attached") and " s" in result.message


@pytest.mark.parametrize(("failing", "load_program", "expected"), [
    ((), True, ["privileges", "bcc", "tracefs", "tracepoints", "headers", "program"]),
    ((), False, ["privileges", "bcc", "tracefs", "tracepoints", "headers"]),
    (("bcc",), True, ["privileges", "bcc", "tracefs", "tracepoints", "headers"]),
    (("privileges", "headers"), True, ["privileges", "bcc", "tracefs", "tracepoints", "headers"]),
    (("tracepoints",), True, ["privileges", "bcc", "tracefs", "tracepoints", "headers"]),
    # No tracefs: nothing to look for tracepoints in, but the headers are still checked.
    (("tracefs",), True, ["privileges", "bcc", "tracefs", "headers"]),
])
def test_run_checks_reports_independent_problems_and_skips_dependent_ones(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing: tuple[str, ...], load_program: bool,
        expected: list[str]) -> None:
    def stub(name: str):
        return lambda *args, **kwargs: CheckResult(name, name not in failing, name)

    monkeypatch.setattr(preflight, "check_privileges", stub("privileges"))
    monkeypatch.setattr(preflight, "check_bcc", stub("bcc"))
    monkeypatch.setattr(preflight, "check_tracefs", lambda root, euid, can_mount: (
        stub("tracefs")(), None if "tracefs" in failing else tmp_path))
    monkeypatch.setattr(preflight, "check_tracepoints", stub("tracepoints"))
    monkeypatch.setattr(preflight, "check_headers", stub("headers"))
    monkeypatch.setattr(preflight, "check_program", stub("program"))
    monkeypatch.setattr(preflight, "check_blindspots", lambda seconds, root: CheckResult("blindspots", True, "", True))
    results = preflight.run_checks(tmp_path / "cache", load_program=load_program)
    assert [r.name for r in results] == expected
    assert [r.name for r in results if not r.ok] == list(failing)
    # The probe for blind threads runs only when asked, after the program loaded.
    probed = preflight.run_checks(tmp_path / "cache", load_program=load_program, probe_s=1)
    assert [r.name for r in probed] == expected + (["blindspots"] if expected[-1:] == ["program"] else [])


def test_run_checks_on_an_empty_tracefs_root_names_the_missing_tracepoints(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(preflight, "check_bcc", lambda: CheckResult("bcc", True, "stub"))
    monkeypatch.setattr(preflight, "check_headers", lambda cache_dir: CheckResult("headers", True, "stub"))
    monkeypatch.setattr(preflight, "check_program", _unexpected("check_program"))
    empty = tmp_path / "tracefs"
    empty.mkdir()
    results = {r.name: r for r in preflight.run_checks(tmp_path / "cache", tracefs_root=empty)}
    assert results["tracefs"].ok
    assert not results["tracepoints"].ok
    assert results["tracepoints"].message == (
        f"{empty} has no events/ directory, so none of {', '.join(tracefs.TRACEPOINTS)}: it is not a mounted "
        "tracefs; mount one (mount -t tracefs nodev /sys/kernel/tracing)")
    assert "program" not in results
