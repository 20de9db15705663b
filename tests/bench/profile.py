"""Profiling a running server with py-spy, and boiling its collapsed stacks down to the top costs."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from .procs import find_tool

# Leaf frames are sorted into layers by where their code lives (first match wins).
LAYERS: tuple[tuple[str, str], ...] = (
    ("fleetd/", "fleetd"),
    ("tests/bench/", "bench app"),
    ("sqlite3", "sqlite3"),
    ("msgspec", "msgspec"),
    ("litestar/", "litestar"),
    ("uvicorn/", "uvicorn"),
    ("httptools", "httptools"),
    ("uvloop", "uvloop (event loop, TLS)"),
    ("ssl.py", "ssl module"),
    ("asyncio/", "asyncio"),
    ("anyio/", "anyio"),
    ("concurrent/", "thread pool"),
    ("threading.py", "thread pool"),
    ("queue.py", "thread pool"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> Path:
    """Sample ``pid`` for ``seconds`` into a collapsed-stack file (one ``f1;f2;... count`` per line)."""
    spy = find_tool("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed")
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--nolineno", "--output", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-1500:]}")
    return out


def short(frame: str) -> str:
    """'handle (/venv/lib/python3.11/site-packages/litestar/routes/http.py)' -> 'handle (litestar/routes/http.py)'."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for anchor in ("site-packages/", "src/", "lib/python3.11/", "/tests/"):
        if anchor in file:
            file = ("tests/" if anchor == "/tests/" else "") + file.rsplit(anchor, 1)[1]
            break
    return f"{m['func']} ({file})"


def layer(frame: str) -> str:
    for needle, name in LAYERS:
        if needle in frame:
            return name
    return "other"


def _is_app_code(frame: str) -> bool:
    """fleetd's own request-time code (not the CLI frames at the root of every stack)."""
    return "(fleetd/" in frame and "(fleetd/cli/" not in frame and "(fleetd/__main__" not in frame


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """As % of all samples: self time by function, inclusive time of fleetd's functions, self time by layer."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_time[frames[-1]] += n
        layers[layer(frames[-1])] += n
        for f in set(frames):
            if _is_app_code(f):
                inclusive[f] += n

    def pct(c: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100 * v / total, 1)] for name, v in c.most_common(k)] if total else []

    return {"samples": total, "self": pct(self_time, top), "inclusive": pct(inclusive, top),
            "layers": pct(layers, len(LAYERS) + 1)}
