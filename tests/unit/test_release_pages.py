"""release_compiler_pages on real mappings of this process: a library's clean pages
leave the resident set, pages the process changed (RELRO-like) stay as they are."""

from __future__ import annotations

import ctypes as ct
import mmap
from pathlib import Path

from tracer.sources.bcc import release_compiler_pages

PAGES = 64


def _rss_kb(addr: int) -> tuple[int, int]:
    """(Rss, Anonymous) in kB of the mapping that starts at ``addr``."""
    mine = False
    rss = anon = 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            mine = int(head[0].split("-")[0], 16) == addr
        elif mine and head[0] == "Rss:":
            rss = int(head[1])
        elif mine and head[0] == "Anonymous:":
            anon = int(head[1])
    return rss, anon


def _libc() -> ct.CDLL:
    libc = ct.CDLL(None, use_errno=True)
    libc.mmap.restype = ct.c_void_p
    libc.mmap.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long)
    libc.munmap.argtypes = (ct.c_void_p, ct.c_size_t)
    libc.mprotect.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int)
    return libc


def test_clean_library_pages_leave_the_resident_set(tmp_path):
    path = tmp_path / "libLLVM-fake.so"
    path.write_bytes(b"\x5a" * PAGES * mmap.PAGESIZE)
    libc = _libc()
    size = PAGES * mmap.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, f.fileno(), 0)
    try:
        assert ct.string_at(addr, size) == b"\x5a" * size  # every page read: resident
        assert _rss_kb(addr)[0] >= size // 1024
        assert release_compiler_pages() >= size
        assert _rss_kb(addr)[0] == 0
        assert ct.string_at(addr, size) == b"\x5a" * size  # and back from the file when read
    finally:
        libc.munmap(addr, size)


def test_pages_the_process_changed_stay(tmp_path):
    """Relocated data that the loader made read-only afterwards (RELRO) is anonymous:
    dropping it would bring back the file's unrelocated bytes."""
    path = tmp_path / "libclang-fake.so"
    path.write_bytes(b"\x5a" * PAGES * mmap.PAGESIZE)
    libc = _libc()
    size = PAGES * mmap.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, f.fileno(), 0)
    try:
        ct.memset(addr, 0x17, size)  # "relocated"
        assert libc.mprotect(addr, size, mmap.PROT_READ) == 0
        assert _rss_kb(addr)[1] >= size // 1024
        release_compiler_pages()
        assert ct.string_at(addr, size) == b"\x17" * size
    finally:
        libc.munmap(addr, size)
