"""Writes the dashboards users import (dashboards/*.json) from their code (dashboards/src).

    .venv/bin/python -m dashboards.generate           # rewrite the JSON files
    .venv/bin/python -m dashboards.generate --check   # exit 1 when a file differs

The files are Grafana's classic dashboard JSON (schemaVersion of the pinned
grafana-foundation-sdk), with "${datasource}" for the data source: import them in the
UI (choose a Prometheus) or provision them (dashboards/provisioning).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.src import health, latency, overview, stuck

HERE = Path(__file__).resolve().parent
BUILDERS = {"overview": overview.build, "stuck": stuck.build, "latency": latency.build,
            "health": health.build}


def render() -> dict[Path, str]:
    """{file: its JSON text}: one file per dashboard, keys sorted, so the text is stable."""
    return {HERE / f"tcpstate-{name}.json": JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"
            for name, build in BUILDERS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        stale.append(path)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       str(path), "generated", n=2))
        else:
            path.write_text(text)
            print(f"wrote {os.path.relpath(path)}")
    if args.check and stale:
        print(f"{len(stale)} dashboard(s) differ from dashboards/src: run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
