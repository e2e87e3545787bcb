"""`--run-as USER`: the daemon gives up root once everything privileged is done.

Loading and attaching the program, mounting tracefs, building the header tree and
the first read of every namespace's socket table need root; reading the program's
ring buffer and maps through descriptors already open does not, nor do the web
server on its bound socket and the store on its open database (README, "Least
privilege", says what was measured). setuid() from root to another user clears the
permitted and effective capability sets (no SECBIT_KEEP_CAPS is set), and
no_new_privs keeps an exec from gaining any back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4


class PrivilegeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"--run-as {name}: no such user (create it, e.g. "
                             f"`useradd --system --no-create-home {name}`)") from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"--run-as {name}: that is root; give an unprivileged user")
    return Account(name, pw.pw_uid, pw.pw_gid)


def hand_over(paths: list[Path], to: Account) -> None:
    """Gives ``to`` the files it writes after the drop: the timeline database with its
    WAL and shared-memory files, and their directory (SQLite makes files beside the
    database). A shared directory (sticky or world-writable, as /tmp) stays as it is."""
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
            continue
        os.chown(path, to.uid, to.gid)


def capabilities(pid: str = "self") -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a process, from /proc."""
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cap"):
            key, value = line.split(":")
            caps[key] = int(value.strip(), 16)
    return caps


def drop_to(to: Account) -> None:
    """Every thread becomes ``to`` with no capabilities (glibc applies set*id to all
    threads of the process)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    try:
        os.setgroups([])
        os.setgid(to.gid)
        os.setuid(to.uid)
    except OSError as exc:
        raise PrivilegeError(f"--run-as {to.name}: {exc.strerror}") from None
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"--run-as {to.name}: prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    # A changed uid makes the process undumpable, which leaves /proc/self owned by root;
    # dumpable again, the daemon reads its own /proc entries as the user it now is.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    caps = capabilities()
    if caps.get("CapEff") or caps.get("CapPrm"):
        raise PrivilegeError(f"--run-as {to.name}: capabilities remain after the drop ({caps})")
    log.info("running as %s (uid %d): no capabilities left", to.name, to.uid)
