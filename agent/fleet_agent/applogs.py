"""A logs action: the last lines of an app's log (``apps/<name>/log``, then ``log.1``), bounded in lines and bytes.

The text goes to the server in the action's succeeded report, so it is kept small
enough for any report: at most MAX_BYTES of UTF-8, with ANSI colour codes removed
and other control characters but tab and newline replaced by ``?`` (an escaped
control character would take six bytes of JSON). A device turns the upload off
with ``FLEET_AGENT_ALLOW_LOG_UPLOAD=0``: local configuration on purpose, which
no config action from the server can change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ALLOW_ENV = "FLEET_AGENT_ALLOW_LOG_UPLOAD"
DEFAULT_LINES = 200
MAX_LINES = 2000
MAX_BYTES = 256 * 1024

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class LogsRefused(Exception):
    pass


def lines_asked(params: Any) -> int:
    raw = params.get("lines", DEFAULT_LINES) if isinstance(params, dict) else DEFAULT_LINES
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_LINES:
        raise LogsRefused(f"lines must be 1..{MAX_LINES}, got {raw!r}")
    return n


def _tail_bytes(app_root: Path, size: int) -> tuple[bytes, bool]:
    """The last ``size`` bytes of ``log.1`` followed by ``log``, and whether that is all there is."""
    chunks: list[bytes] = []
    left = size
    for path in (app_root / "log", app_root / "log.1"):
        try:
            with open(path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if left <= 0:
                    return b"".join(chunks), end == 0
                start = max(0, end - left)
                f.seek(start)
                chunks.insert(0, f.read(end - start))
        except FileNotFoundError:
            continue
        if start > 0:
            return b"".join(chunks), False
        left -= len(chunks[0])
    return b"".join(chunks), True


def _clean(data: bytes) -> str:
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("?", _ANSI.sub("", text))


def last_lines(app_root: Path, name: str, params: Any, max_bytes: int = MAX_BYTES) -> tuple[str, dict[str, Any]]:
    """The report message and result for the last lines of app ``name``'s log."""
    wanted = lines_asked(params)
    data, whole = _tail_bytes(app_root, max_bytes + 1)
    partial = False
    if not whole:
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1:]  # the first line began before what was read
        else:
            data, partial = data[-max_bytes:], True  # one line longer than the cap: its end
    available = _clean(data).splitlines(keepends=True)
    lines = available[-wanted:]
    # Cleaning may grow the text (an invalid byte becomes a 3-byte U+FFFD): drop lines from the front until it fits.
    size = sum(len(line.encode()) for line in lines)
    while size > max_bytes and len(lines) > 1:
        size -= len(lines.pop(0).encode())
    text = "".join(lines)
    if size > max_bytes:
        text, partial = text.encode()[-max_bytes:].decode("utf-8", "ignore"), True
    truncated = partial or (len(lines) < wanted and (not whole or len(lines) < len(available)))
    if not lines:
        return f"{name} has written nothing to its log yet", {"text": "", "lines": 0, "truncated": False}
    if truncated:
        message = (f"the last {len(lines)} of the {wanted} lines asked for of {name}'s log, cut to fit in "
                   f"{max_bytes // 1024} KiB")
    elif len(lines) < wanted:
        message = f"all {len(lines)} lines of {name}'s log (fewer than the {wanted} asked for)"
    else:
        message = f"the last {len(lines)} lines of {name}'s log"
    return message, {"text": text, "lines": len(lines), "truncated": truncated}


def allowed(env: Mapping[str, str]) -> None:
    """Refuse when this device turned log upload off (or set the option to something unreadable)."""
    raw = env.get(ALLOW_ENV, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return
    if raw in ("0", "false", "no", "off"):
        raise LogsRefused(f"this device does not upload app logs: {ALLOW_ENV}={raw} in the agent's environment; "
                          f"set {ALLOW_ENV}=1 (or remove it) where the agent is configured (its systemd unit) and "
                          "restart fleet-agent to allow it")
    raise LogsRefused(f"{ALLOW_ENV} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}; fix it in the "
                      "agent's environment and restart fleet-agent")
