"""`python -m tests.bench.compare --before REF`: this build against an earlier one, interleaved, on one machine.

A change that should not cost speed (a move, a refactor) is judged by running the benchmark suite on both builds
in turns — before, after, after, before, ... — so the machine's drift hits both alike, and comparing each target's
median. Every target already is a ratio against a baseline measured in the same run, so what is printed is a ratio
of ratios: 1.00 means no change; a target is flagged when the new build is worse by more than --tolerance.

The earlier build runs from a git worktree of REF with its own benchmark harness (its module paths may differ),
on the same Python environment. Arguments after ``--`` go to both suites (default: ``--quick --no-profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the earlier build: a commit, tag or branch of this repository")
    p.add_argument("--rounds", type=int, default=3, help="suite runs per build (default 3; the median counts)")
    p.add_argument("--tolerance", type=float, default=0.10, help="worse by more than this fraction is flagged")
    p.add_argument("--json", type=Path, help="also write every run's targets and the comparison here")
    p.add_argument("bench_args", nargs="*", help="arguments for both suites, after --")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    a.bench_args = a.bench_args or ["--quick", "--no-profile"]
    return a


def worse_by(op: str, before: float, after: float) -> float:
    """How much worse ``after`` is than ``before`` for a target with comparison ``op`` (negative: better)."""
    if before == 0:
        return 0.0 if after == 0 else float("inf")
    change = after / before - 1
    return -change if op == ">=" else change


def compare(runs: dict[str, list[dict[str, float]]], ops: dict[str, str], tolerance: float) -> list[dict[str, Any]]:
    """One row per target both builds measured: medians, ratio after/before, and whether it is flagged."""
    rows = []
    common = set.intersection(*(set(r) for r in runs["before"] + runs["after"]))
    for what in sorted(common):
        b = statistics.median(r[what] for r in runs["before"])
        a = statistics.median(r[what] for r in runs["after"])
        worse = worse_by(ops[what], b, a)
        rows.append({"what": what, "before": b, "after": a, "ratio": a / b if b else None,
                     "worse_by": worse, "flagged": worse > tolerance})
    return rows


def targets(doc: dict[str, Any], ops: dict[str, str]) -> dict[str, float]:
    out = {}
    for t in doc["targets"]:
        out[t["what"]] = float(t["value"])
        ops[t["what"]] = t["target"].split()[0]
    return out


def run_suite(tree: Path, bench_args: list[str], workdir: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree / 'agent'}"}
    cmd = [sys.executable, "-m", "tests.bench", *bench_args, "--workdir", str(workdir), "--json", str(out)]
    print(f"$ (cd {tree} && {' '.join(cmd[1:])})", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fleetd-compare-"))
    before_tree = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), a.before], cwd=ROOT, check=True)
    trees = {"before": before_tree, "after": ROOT}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    ops: dict[str, str] = {}
    try:
        for i in range(a.rounds):
            for build in ("before", "after") if i % 2 == 0 else ("after", "before"):
                doc = run_suite(trees[build], a.bench_args, work / f"wd-{build}", work / f"{build}-{i}.json")
                runs[build].append(targets(doc, ops))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    rows = compare(runs, ops, a.tolerance)
    only = sorted(set().union(*runs["before"], *runs["after"]) - {r["what"] for r in rows})
    print(f"\n{a.rounds} rounds per build, interleaved; medians; before = {a.before}, after = the work tree")
    print(f"{'target':<72} {'before':>9} {'after':>9} {'after/before':>13}")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        flag = f"  WORSE by {r['worse_by']:.0%}" if r["flagged"] else ""
        print(f"{r['what'][:72]:<72} {r['before']:>9.3f} {r['after']:>9.3f} {ratio:>13}{flag}")
    if only:
        print("measured by one build only: " + "; ".join(only))
    if a.json:
        a.json.write_text(json.dumps({"before": a.before, "runs": runs, "comparison": rows}, indent=2) + "\n")
    return 1 if any(r["flagged"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
