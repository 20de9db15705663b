"""The small languages of a rollout: stages, failure threshold, start time, maintenance window, health
condition, and the bucket that places a device in a stage. Pure functions, no storage.

Times are the server's local time unless a zone is given (an IANA name such as ``Europe/Berlin``,
or ``UTC``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.clock import parse_duration
from ..core.errors import InvalidArgument
from ..core.names import METRIC_NAME

DEFAULT_STAGES = (5.0, 25.0, 100.0)
MAX_STAGES = 20


# --- buckets ------------------------------------------------------------------------

def bucket(rollout_id: str, device_id: str) -> float:
    """A device's place in a rollout, in [0, 100): stable for the pair, independent of every other device."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / 2**64


# --- stages and thresholds ------------------------------------------------------------

def check_stages(stages: list[float]) -> list[float]:
    """Cumulative percentages, strictly increasing, the last one 100."""
    if not stages:
        return list(DEFAULT_STAGES)
    if len(stages) > MAX_STAGES:
        raise InvalidArgument(f"at most {MAX_STAGES} stages, got {len(stages)}")
    out = [float(s) for s in stages]
    for s in out:
        if not math.isfinite(s) or not 0 < s <= 100:
            raise InvalidArgument(f"stage {s:g} is not a percentage in (0, 100]; write e.g. 5,25,100")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise InvalidArgument(f"stages are cumulative percentages and must grow: {_fmt(out)} does not; "
                              "write e.g. 5,25,100")
    if out[-1] != 100:
        raise InvalidArgument(f"the last stage must be 100 (every targeted device), got {_fmt(out)}; "
                              f"write e.g. {_fmt([*out, 100.0])}")
    return out


def parse_stages(text: str) -> list[float]:
    """'5,25,100' → [5.0, 25.0, 100.0]."""
    parts = [p.strip().rstrip("%") for p in text.split(",")]
    try:
        return check_stages([float(p) for p in parts])
    except ValueError:
        raise InvalidArgument(f"cannot read stages {text!r}; write cumulative percentages such as 5,25,100") from None


def parse_percent(text: str) -> float:
    """'5%' or '5' → 5.0 (a percentage 0..100)."""
    raw = text.strip().rstrip("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"cannot read {text!r} as a percentage; write e.g. 5%") from None
    return check_percent(value)


def check_percent(value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidArgument(f"the failure threshold is a percentage 0..100, got {value:g}")
    return value


def _fmt(stages: list[float]) -> str:
    return ",".join(f"{s:g}" for s in stages)


# --- time zones and the start time -------------------------------------------------------

def zone(name: str) -> dt.tzinfo:
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin, or UTC") from None


def _looks_like_zone(token: str) -> bool:
    return token.upper() == "UTC" or ("/" in token and not token[:1].isdigit())


def parse_start_at(text: str, now: float) -> float | None:
    """'' → None (start now); '+2h' (from now); ISO date and time, local unless it carries an offset or zone
    ('2025-03-01 02:00', '2025-03-01T02:00:00+01:00', '2025-03-01 02:00 Europe/Berlin')."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("+") or text.lower().startswith("in "):
        return now + parse_duration(text.lstrip("+").removeprefix("in ").removeprefix("IN "))
    tz: dt.tzinfo | None = None
    head, _, last = text.rpartition(" ")
    if head and _looks_like_zone(last):
        text, tz = head.strip(), zone(last)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"cannot read start time {text!r}; write e.g. 2025-03-01 02:00 (server local time), "
                              "2025-03-01T02:00+01:00, '2025-03-01 02:00 Europe/Berlin' or +2h") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz) if tz else when.astimezone()
    elif tz is not None:
        raise InvalidArgument(f"start time {text!r} has both an offset and a zone name; give one")
    ts = when.timestamp()
    if ts < now - 60:
        raise InvalidArgument(f"start time {when.isoformat()} is in the past; leave --start-at out to start now")
    return ts


# --- maintenance windows -------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


def _day(token: str) -> int:
    t = token.strip().lower()[:3]
    if t not in DAYS:
        raise InvalidArgument(f"unknown day {token!r}; use Mon, Tue, Wed, Thu, Fri, Sat, Sun")
    return DAYS.index(t)


def _minutes(token: str, what: str) -> int:
    m = _TIME.fullmatch(token.strip())
    if not m or int(m.group(2)) > 59 or int(m.group(1)) * 60 + int(m.group(2)) > 24 * 60:
        raise InvalidArgument(f"cannot read the {what} time {token!r}; write HH:MM, e.g. 01:00")
    return int(m.group(1)) * 60 + int(m.group(2))


@dataclass(frozen=True)
class Window:
    """Days and a daily time range, e.g. 'Mon-Fri 01:00-05:00'. A range that passes midnight
    ('Fri 22:00-02:00') belongs to the day it starts on."""

    days: frozenset[int]
    start: int  # minutes after midnight
    end: int
    zone_name: str = ""  # '' = the server's local time
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Window | None:
        text = " ".join(text.split())
        if not text:
            return None
        tokens = text.split(" ")
        zone_name = ""
        if len(tokens) > 1 and _looks_like_zone(tokens[-1]):
            zone_name = tokens.pop()
            zone(zone_name)
        if len(tokens) == 1:
            tokens.insert(0, "daily")
        if len(tokens) != 2 or "-" not in tokens[1]:
            raise InvalidArgument(f"cannot read maintenance window {text!r}; write e.g. 'Mon-Fri 01:00-05:00', "
                                  "'Sat,Sun 00:00-06:00 Europe/Berlin' or 'daily 22:00-04:00'")
        days_text, range_text = tokens
        start_text, _, end_text = range_text.partition("-")
        start, end = _minutes(start_text, "start"), _minutes(end_text, "end")
        if start == end:
            raise InvalidArgument(f"the window {range_text} starts and ends at the same time; for a whole day "
                                  "write 00:00-24:00")
        if start == 24 * 60:
            raise InvalidArgument("a window cannot start at 24:00; write 00:00")
        return cls(_days(days_text), start, end, zone_name, text)

    def _local(self, ts: float) -> dt.datetime:
        if self.zone_name:
            return dt.datetime.fromtimestamp(ts, zone(self.zone_name))
        return dt.datetime.fromtimestamp(ts).astimezone()

    def contains(self, ts: float) -> bool:
        t = self._local(ts)
        minute, day = t.hour * 60 + t.minute, t.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)

    def next_open(self, ts: float) -> float:
        """When the window next opens at or after ``ts`` (``ts`` itself when it is open)."""
        if self.contains(ts):
            return ts
        t = self._local(ts)
        for ahead in range(8):
            day = (t + dt.timedelta(days=ahead)).date()
            if day.weekday() not in self.days:
                continue
            opens = dt.datetime.combine(day, dt.time(self.start // 60, self.start % 60), t.tzinfo)
            # Wall-clock arithmetic; fold/gap hours around DST changes shift the opening by that hour at most.
            if opens.timestamp() >= ts:
                return opens.timestamp()
        raise AssertionError("a window with days opens within a week")


def _days(text: str) -> frozenset[int]:
    if text.lower() in ("daily", "*", "every", "all"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        a = _day(first)
        if not sep:
            out.add(a)
            continue
        b = _day(last)
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


# --- health condition ---------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(<=|>=|==|!=|<|>|=)\s*(-?[0-9.]+(?:[eE][-+]?\d+)?)\s*")


@dataclass(frozen=True)
class HealthCondition:
    """A condition every telemetry point of one metric must meet during a device's soak, e.g. cpu_temp<80."""

    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> HealthCondition | None:
        if not text.strip():
            return None
        m = _CONDITION.fullmatch(text)
        if not m:
            raise InvalidArgument(f"cannot read health condition {text!r}; write METRIC OP NUMBER, e.g. cpu_temp<80 "
                                  "(OP is one of < <= > >= == !=)")
        metric, op, raw = m.groups()
        METRIC_NAME.check(metric)
        try:
            value = float(raw)
        except ValueError:
            raise InvalidArgument(f"cannot read {raw!r} as a number in the health condition") from None
        return cls(metric, "==" if op == "=" else op, value)

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"
