"""Every benchmark run's results, kept, and the trend of each target across them.

`python -m tests.bench` saves each run's JSON in docs/bench/ (``--no-save`` to skip), named by the time it started
and the commit it measured, with the machine and its Litestar hello-world rate, so that a regression shows in the
history even on another machine (ratios travel; absolute numbers do not). `python -m tests.bench.history` prints
the targets of the last runs side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HISTORY = ROOT / "docs" / "bench"


def commit() -> str:
    """The commit measured, with ``+dirty`` when the work tree has changes; ``?`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def hello_world_rps(doc: dict[str, Any]) -> float | None:
    """The machine's Litestar hello-world rate in this run (the check-in benchmark's baseline), if it ran."""
    baseline = doc.get("results", {}).get("checkin", {}).get("baseline", {})
    return baseline.get("rps")


def save(doc: dict[str, Any], folder: Path = HISTORY, started: float | None = None) -> Path:
    """Write ``doc`` (a run's JSON) into the history, with the commit and the hello-world rate; → its path."""
    doc = {**doc, "commit": commit(), "hello_world_rps": hello_world_rps(doc)}
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(started or time.time()))
    quick = "-quick" if doc.get("settings", {}).get("quick") else ""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-{doc['commit'].replace('+', '-')}{quick}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def load(folder: Path = HISTORY) -> list[tuple[Path, dict[str, Any]]]:
    """The saved runs, oldest first (by file name: the time they started)."""
    return [(p, json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def table(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    """Targets as rows, runs as columns (a value, and ``!`` where it missed its target)."""
    if not runs:
        return "no saved runs yet: `python -m tests.bench` saves each run in docs/bench/"
    heads = [p.name[:17] for p, _ in runs]
    targets: dict[str, dict[int, str]] = {}
    for i, (_, doc) in enumerate(runs):
        for t in doc.get("targets", []):
            targets.setdefault(f"{t['what']} ({t['target']})", {})[i] = f"{t['value']:g}{'' if t['met'] else '!'}"
    width = max(len(k) for k in targets) if targets else 20
    lines = [f"{'run':<{width}} " + " ".join(f"{h:>17}" for h in heads),
             f"{'commit':<{width}} " + " ".join(f"{d.get('commit', '?')[:17]:>17}" for _, d in runs),
             f"{'quick':<{width}} " + " ".join(f"{'yes' if d['settings'].get('quick') else 'no':>17}" for _, d in runs),
             f"{'hello world rps':<{width}} " + " ".join(
                 f"{(d.get('hello_world_rps') or 0):>17,.0f}" for _, d in runs)]
    for what, values in targets.items():
        lines.append(f"{what:<{width}} " + " ".join(f"{values.get(i, '-'):>17}" for i in range(len(runs))))
    return "\n".join(lines) + "\n(! = target missed)"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def markdown(runs: list[tuple[Path, dict[str, Any]]]) -> str:
    """The latest run's targets, then each target's trend over ``runs``, as Markdown for docs/performance.md."""
    if not runs:
        return "no saved runs yet"
    path, last = runs[-1]
    m = last.get("machine", {})
    out = [f"Latest run: `{path.name}` (commit `{last.get('commit', '?')}`, {m.get('date', '?')}, "
           f"{m.get('nproc', '?')} CPUs, Litestar hello world {last.get('hello_world_rps') or 0:,.0f} rps):", "",
           "| target | value | limit | |", "|---|---|---|---|"]
    for t in last.get("targets", []):
        out.append(f"| {t['what']} | {_num(t['value'])} | {t['target']} | {'met' if t['met'] else '**missed**'} |")
    heads = [p.name[:17] for p, _ in runs]
    out += ["", f"Trend over the last {len(runs)} saved runs (`!` = missed):", "",
            "| target | " + " | ".join(heads) + " |", "|---" * (len(runs) + 1) + "|",
            "| hello world rps | " + " | ".join(f"{d.get('hello_world_rps') or 0:,.0f}" for _, d in runs) + " |"]
    rows: dict[str, dict[int, str]] = {}
    for i, (_, doc) in enumerate(runs):
        for t in doc.get("targets", []):
            rows.setdefault(f"{t['what']} ({t['target']})", {})[i] = f"{_num(t['value'])}{'' if t['met'] else '!'}"
    for what, values in rows.items():
        out.append(f"| {what} | " + " | ".join(values.get(i, "-") for i in range(len(runs))) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--last", type=int, default=6, help="how many of the latest runs to show (default 6)")
    p.add_argument("--full-only", action="store_true", help="leave out --quick runs")
    p.add_argument("--markdown", action="store_true",
                   help="the latest run's targets and the trend as Markdown (for docs/performance.md)")
    a = p.parse_args(argv)
    runs = [r for r in load() if not (a.full_only and r[1]["settings"].get("quick"))]
    print(markdown(runs[-a.last:]) if a.markdown else table(runs[-a.last:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
