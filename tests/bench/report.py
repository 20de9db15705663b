"""The results as a table for people and as JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cases import Result


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def render(machine: dict[str, Any], settings: dict[str, Any], results: list[Result],
           profiles: dict[str, Any]) -> str:
    out = [f"fleetd benchmarks — {machine['date']}, {machine['nproc']} CPUs ({machine['cpu_model']}), "
           f"Python {machine['python']}, litestar {machine['litestar']}, uvicorn {machine['uvicorn']}",
           f"medians of {settings['runs']} runs; wrk -t{settings['threads']} -c{settings['connections']} "
           f"-d{settings['seconds']:g}s after a {settings['warmup']:g} s warm-up; {settings['devices']:,} devices", ""]
    for r in results:
        out.append(f"## {r.name}   (baseline: {r.baseline})")
        out += _table(r.rows, ("metric", "fleetd", "baseline", "ratio"))
        out.append("")
    targets = [t for r in results for t in r.targets]
    if targets:
        out.append("## targets")
        rows = [(("met   " if t.met else "MISSED") + " " + t.what, f"{t.value:,.2f}", f"{t.op} {t.limit:g}",
                 f"{t.value / t.limit:.2f}x") for t in targets]
        out += _table(rows, ("", "value", "target", "of target"))
        out.append("")
    for what, profile in profiles.items():
        out.append(f"## {what} profile (py-spy, {profile['rounds']} samples over {profile['seconds']:g} s; "
                   "% of samples, 100 % = one core all the time)")
        out.append(f"event loop thread busy {profile['loop_busy_pct']:.1f} %, other threads "
                   f"{profile['threads_busy_pct']:.1f} %")
        out.append("event loop, self time by layer (where the innermost frame's code lives):")
        out += [f"  {pct:5.1f}  {name}" for name, pct in profile["loop_layers"]]
        out.append("event loop, self time, top functions:")
        out += [f"  {pct:5.1f}  {name}" for name, pct in profile["loop_self"]]
        out.append("event loop, inclusive time of fleetd's functions:")
        out += [f"  {pct:5.1f}  {name}" for name, pct in profile["loop_inclusive_fleetd"]]
        out.append("other threads:")
        out += [f"  {pct:5.1f}  {name}" for name, pct in profile["threads"]]
        out.append(f"collapsed stacks: {profile['file']}")
        out.append("")
    return "\n".join(out)


def as_json(machine: dict[str, Any], settings: dict[str, Any], results: list[Result],
            profiles: dict[str, Any]) -> dict[str, Any]:
    return {"machine": machine, "settings": settings, "results": {r.name: r.to_json() for r in results},
            "targets": [t.to_json() for r in results for t in r.targets], "profiles": profiles}
