"""Shared value types and helpers used across services."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time

from .errors import InvalidArgument


def now() -> float:
    return time.time()


def to_dt(ts: float | None) -> dt.datetime | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def new_ordered_id(prefix: str) -> str:
    """An id that sorts by when it was made: the milliseconds since the epoch (11 hex digits, fixed width until the
    year 2527), then 48 random bits as in :func:`new_id`. For rows made in bulk (actions: a rollout's stage start
    makes tens of thousands): each goes in at the right edge of the indexes keyed by it instead of at a random
    page (docs/decisions.md, "Action ids sort by time")."""
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(6)}"


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float:
    """'90s', '10m', '24h', '7d', '2w' or plain seconds → seconds."""
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise InvalidArgument(f"cannot read duration {text!r}; write e.g. 90s, 10m, 24h or 7d")
    return float(m.group(1)) * _UNIT[m.group(2)]
