"""The few kernel UAPI offsets the live source relies on, checked against the installed header."""

from __future__ import annotations

import subprocess

from tracer.sources import bcc


def test_prog_info_offsets_match_linux_bpf_h(tmp_path):
    source = tmp_path / "info.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\n"
        "int main(void) { printf(\"%zu %zu\\n\", offsetof(struct bpf_prog_info, recursion_misses),"
        " sizeof(struct bpf_prog_info)); return 0; }\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "info"), str(source)], check=True)
    offset, size = map(int, subprocess.run([str(tmp_path / "info")], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert offset == bcc.PROG_INFO_RECURSION_MISSES
    # Asking for less than the kernel's struct is fine; it must reach past the field.
    assert bcc.PROG_INFO_SIZE >= offset + 8 and bcc.PROG_INFO_SIZE <= size
