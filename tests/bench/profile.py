"""Profiling a running server with py-spy, and boiling its collapsed stacks down to the top costs.

The event loop thread is reported apart from the worker threads: the loop is
where requests queue up, so its share of time is what bounds throughput and
tail latency. py-spy leaves out threads it sees idle, but counts some blocked
queue waits as active; stacks whose innermost frame is such a wait are dropped.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from .procs import find_tool

# Innermost frames are sorted into layers by where their code lives (first match wins).
LAYERS: tuple[tuple[str, str], ...] = (
    ("(fleetd/", "fleetd"),
    ("(tests/bench/", "bench app"),
    ("(sqlite3", "sqlite3"),
    ("(msgspec", "msgspec"),
    ("(litestar/", "litestar"),
    ("(uvicorn/", "uvicorn (HTTP, and TLS + socket writes inside uvloop)"),
    ("(httptools", "httptools"),
    ("(uvloop", "uvloop"),
    ("(ssl.py", "ssl module"),
    ("(asyncio/", "asyncio / uvloop"),
    ("(anyio/", "anyio"),
    ("(concurrent/", "thread pool"),
    ("(threading.py", "threading"),
)
# A thread blocked in one of these (C-level queue waits under them) is idle, whatever py-spy thinks.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py)", "Condition.wait (threading.py)",
               "Event.wait (threading.py)", "Queue.get (queue.py)", "Store._write_loop (fleetd/store/database.py)")
THREAD_ROOT = "Thread._bootstrap (threading.py)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")
_SAMPLES = re.compile(r"Samples: (\d+)")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> int:
    """Sample ``pid`` into a collapsed-stack file (``f1;f2;... count`` lines) → the number of sampling rounds.

    py-spy's own "Samples" count grows with the number of threads it saw, so the rounds are the duration times
    the rate (what 100 % of one core means), unless py-spy reports fewer (it fell behind)."""
    spy = find_tool("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed")
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--nolineno", "--output", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    text = p.stdout + p.stderr
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({p.returncode}): {text.strip()[-1500:]}")
    m = _SAMPLES.search(text)
    rounds = max(1, round(seconds)) * rate
    return min(rounds, int(m.group(1))) if m else rounds


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


def summarize(collapsed: str, rounds: int = 0, top: int = 15) -> dict[str, Any]:
    """Per thread group, as % of sampling rounds (so 100 % = one core busy all the time).

    ``loop``: the event loop thread (self time by function and by layer, inclusive
    time of fleetd's functions). ``threads``: worker threads, by innermost frame.
    """
    loop_self: Counter[str] = Counter()
    loop_layers: Counter[str] = Counter()
    loop_incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    loop_n = thread_n = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[0] == THREAD_ROOT:
            if frames[-1] in IDLE_LEAVES:
                continue
            thread_n += n
            where = [f for f in frames if _is_app_code(f)][:3]
            if frames[-1] not in where:
                where.append(frames[-1])
            threads[" > ".join(where)] += n
            continue
        loop_n += n
        loop_self[frames[-1]] += n
        loop_layers[layer(frames[-1])] += n
        for f in dict.fromkeys(frames):  # each function once per stack, in stack order
            if _is_app_code(f):
                loop_incl[f] += n
    rounds = rounds or max(loop_n, 1)

    def pct(c: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100 * v / rounds, 1)] for name, v in c.most_common(k)]

    return {
        "rounds": rounds,
        "loop_busy_pct": round(100 * loop_n / rounds, 1),
        "threads_busy_pct": round(100 * thread_n / rounds, 1),
        "loop_layers": pct(loop_layers, len(LAYERS) + 1),
        "loop_self": pct(loop_self, top),
        "loop_inclusive_fleetd": pct(loop_incl, top),
        "threads": pct(threads, 8),
    }
