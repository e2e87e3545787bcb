"""What the bench prints: the table of its runs (medians per setup, per-run figures
separated by `;`), the held connections and the soak in a line each, and the targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tracer.bench.runs import Hold, Run, Soak


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run]) -> str:
    setups = [s for s in ("untraced", "daemon", "tcpstates") if any(r.setup == s for r in runs)]
    by = {s: [r for r in runs if r.setup == s] for s in setups}
    base = _median([r.rate for r in by["untraced"]])

    def share(r: Run, value: int | None) -> str:
        if value is None:
            return "-"
        return f"{value:,} ({value / r.generated:.1%})"

    rows = [("connections/s", lambda s: _fmt(_median([r.rate for r in by[s]]))),
            ("share of untraced", lambda s: f"{_median([r.rate for r in by[s]]) / base:.1%}")]
    for label, attr in (("transitions generated", "generated"), ("counted in the kernel", "counted"),
                        ("delivered to user space (host)", "delivered"), ("stored in the timeline", "stored")):
        rows.append((label, lambda s, a=attr: "; ".join(
            _fmt(r.generated) if a == "generated" else share(r, getattr(r, a))
            for r in by[s])))
    rows += [("events reported lost", lambda s: "; ".join(_fmt(r.lost) for r in by[s])),
             ("lives found ended unseen", lambda s: "; ".join(_fmt(r.gone) for r in by[s])),
             ("tracer CPU s (load + catch-up)", lambda s: _fmt(_median([r.cpu_s for r in by[s]]), ".1f")),
             ("tracer peak RSS MB", lambda s: _fmt(_median([r.peak_rss_mb for r in by[s]]))),
             ("time to ready s", lambda s: _fmt(_median([r.ready_s for r in by[s]]), ".2f"))]
    width = max(len(r[0]) for r in rows)
    cols = [[f(s) for _, f in rows] for s in setups]
    widths = [max(len(s), *(len(c) for c in col)) for s, col in zip(setups, cols)]
    lines = ["| " + " | ".join([" " * width] + [s.ljust(w) for s, w in zip(setups, widths)]) + " |",
             "|" + "|".join(["-" * (width + 2)] + ["-" * (w + 2) for w in widths]) + "|"]
    for i, (label, _) in enumerate(rows):
        lines.append("| " + " | ".join([label.ljust(width)] + [col[i].ljust(w) for col, w in zip(cols, widths)])
                     + " |")
    return "\n".join(lines)


def held(hold: Hold) -> str:
    return (f"{hold.connections:,} established connections held open ({2 * hold.connections:,} sockets): "
            f"daemon RSS {hold.rss_mb:.0f} MB, tracking {hold.tracked:,} sockets, slowest of 3 scrapes "
            f"{hold.scrape_s:.2f} s; a daemon started with them open was ready in {hold.ready_with_sockets_s:.2f} s")


def soaked(soak: Soak) -> str:
    return (f"soak: {soak.connections:,} connections in {soak.seconds:g} s; daemon RSS every interval (MB): "
            + " ".join(f"{v:.0f}" for v in soak.rss_mb) + f"; {soak.lost:,} events lost; timeline: "
            f"{soak.timeline_written:,} lives written, {soak.timeline_dropped:,} dropped waiting for the store")


@dataclass
class Targets:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def met(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def targets(runs: list[Run], hold: Hold | None, soak: Soak | None) -> Targets:
    t = Targets()
    base = _median([r.rate for r in runs if r.setup == "untraced"])
    daemon = [r for r in runs if r.setup == "daemon"]
    ratio = _median([r.rate for r in daemon]) / base
    t.add("throughput >= 97% of untraced", ratio >= 0.97, f"{ratio:.1%}")
    exact = all(r.counted == r.generated and r.stored == r.generated and r.lost == 0 for r in daemon)
    t.add("nothing lost: counted = stored = generated, 0 lost", exact,
          "; ".join(f"{r.generated - (r.stored or 0):,} not stored, {r.lost:,} lost"
                    + (f", {r.gone:,} lives found ended unseen" if r.gone else "") for r in daemon))
    ready = max(r.ready_s for r in daemon)
    t.add("ready within 2 s", ready < 2, f"{ready:.2f} s at most")
    if hold:
        t.add(f"{hold.connections:,} established: RSS < 300 MB", hold.rss_mb < 300, f"{hold.rss_mb:.0f} MB")
        t.add(f"{hold.connections:,} established: scrape < 1 s", hold.scrape_s < 1, f"{hold.scrape_s:.2f} s")
    if soak and len(soak.rss_mb) >= 3:
        third = max(1, len(soak.rss_mb) // 3)
        first, last = statistics.mean(soak.rss_mb[:third]), statistics.mean(soak.rss_mb[-third:])
        t.add(f"memory flat over {soak.seconds / 60:.0f} min of churn", last <= first * 1.1,
              f"RSS {first:.0f} MB in the first third, {last:.0f} MB in the last")
    return t
