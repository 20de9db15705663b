"""One validator per kind of name, each checking the whole value.

Patterns are matched with ``re.fullmatch``: ``re.match`` with a ``$`` anchor also accepts a trailing
newline. Every module checks names through here (tests/core/test_names.py keeps it so).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import InvalidArgument

# Bidirectional formatting characters: they make a name display differently from what it is
# (U+202E turns "gpj.exe" into "exe.jpg" on screen).
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# Text shown to people (device names, tag values): no control characters, no bidi controls.
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f" + BIDI_CONTROLS + "]"
QUOTE_MAX = 140  # how much of a refused value an error message repeats


class Kind:
    """A kind of name: its pattern and the rule an error message states."""

    def __init__(self, what: str, pattern: str, rule: str) -> None:
        self.what = what
        self.pattern = re.compile(pattern)
        self.rule = rule

    def ok(self, value: str) -> bool:
        return self.pattern.fullmatch(value) is not None

    def check(self, value: str, what: str | None = None) -> str:
        """``value`` if it is a name of this kind, else InvalidArgument saying what one looks like."""
        if not self.ok(value):
            raise InvalidArgument(f"{what or self.what} {value[:QUOTE_MAX]!r} must be {self.rule}")
        return value


HARDWARE_ID = Kind("hardware id", r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
                   "1-128 letters, digits and _.:- starting with a letter or digit")
# A DDI controller id becomes the device's hardware id: the same rule.
CONTROLLER_ID = Kind("controller id", HARDWARE_ID.pattern.pattern,
                     HARDWARE_ID.rule + " (it becomes the device's hardware id)")
DEVICE_TYPE = Kind("device type", r"[a-z0-9][a-z0-9_.-]{0,63}",
                   "1-64 lowercase letters, digits and _.- starting with a letter or digit (e.g. linux-aarch64)")
# An artifact names the device types it is for by exact name or by pattern: ``*`` stands for any run (possibly
# empty) of device-type characters; no other wildcards. docs/protocol.md "Device types and patterns";
# tests/vectors/device_types.txt holds the server, the agent and the RTOS shim to the same rule.
DEVICE_TYPE_PATTERN = Kind(
    "device type", r"(?!.*\*\*)(?=.*[a-z0-9])[a-z0-9*][a-z0-9_.*-]{0,63}",
    "a device type (1-64 lowercase letters, digits and _.- starting with a letter or digit, e.g. linux-aarch64) "
    "or a pattern of those where * stands for any run of them (e.g. linux-*); no other wildcards, no **, "
    "and at least one letter or digit")


def device_type_matches(pattern: str, device_type: str) -> bool:
    """Whether an artifact's device-type ``pattern`` (an exact name, or one with ``*``) covers ``device_type``:
    ``*`` matches any run of characters, possibly empty (a device type has only a-z 0-9 _ . -), every other
    character only itself. Greedy with a return to the last ``*``: at most len(pattern) * len(type) steps, the
    same algorithm as the RTOS shim's fleet_device_type_matches (agent/rtos/src/dtype.c)."""
    p = t = 0
    star = mark = -1
    while t < len(device_type):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] == device_type[t]:
            p += 1
            t += 1
        elif star >= 0:  # let the last * take one more character and try again after it
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    return pattern[p:].strip("*") == ""


def matches_any(patterns: Iterable[str], device_type: str) -> bool:
    """Whether any of an artifact's device-type patterns covers ``device_type``: the one rule everywhere."""
    return any(device_type_matches(p, device_type) for p in patterns)


DEVICE_NAME = Kind("device name", _PRINTABLE + "{1,128}",
                   "1-128 characters without control or bidirectional-formatting characters")
ARTIFACT_NAME = Kind("artifact name", r"[a-z0-9][a-z0-9_.-]{0,63}",
                     "1-64 lowercase letters, digits and _.- starting with a letter or digit")
TAG_KEY = Kind("tag key", r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
               "1-63 letters, digits and _.- starting with a letter or digit")
TAG_VALUE = Kind("tag value", r"[^=,\x00-\x1f\x7f-\x9f" + BIDI_CONTROLS + "]{0,128}",
                 "at most 128 characters without = , control or bidirectional-formatting characters")
# Users and API keys.
ACCOUNT_NAME = Kind("name", r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}",
                    "1-64 characters of letters, digits and _.@+- starting with a letter or digit")
METRIC_NAME = Kind("metric name", r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}",
                   "1-128 letters, digits and _.:- not starting with a digit")
ENV_NAME = Kind("env name", r"[A-Za-z_][A-Za-z0-9_]{0,127}",
                "1-128 letters, digits and _ not starting with a digit")
DDI_TENANT = Kind("ddi_tenant", r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                  "1-64 letters, digits and _.- (hawkBit's default is DEFAULT)")

# --- file names ----------------------------------------------------------------------------

FILE_NAME_MAX = 255
# The agent keeps an app's signed manifest under this name beside its files (fleet_agent.unpack).
RESERVED_FILE_NAMES = frozenset({".", "..", ".fleet-manifest.json"})


def check_file_name(value: str) -> str:
    """An artifact's file name: one path component a device can create and a person can read."""
    if not value or len(value.encode("utf-8", "surrogatepass")) > FILE_NAME_MAX:
        raise InvalidArgument(f"file name must be 1-{FILE_NAME_MAX} bytes (UTF-8), got {len(value)} characters")
    if "/" in value or "\\" in value:
        raise InvalidArgument(f"file name {value[:QUOTE_MAX]!r} must not contain / or \\")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs") or c in BIDI_CONTROLS), None)
    if bad is not None:
        raise InvalidArgument(f"file name {value[:QUOTE_MAX]!r} must not contain control or "
                              f"bidirectional-formatting characters (found U+{ord(bad):04X})")
    if value in RESERVED_FILE_NAMES:
        raise InvalidArgument(f"file name {value!r} is reserved; choose another")
    return value


# --- search text -------------------------------------------------------------------------------

SEARCH_MAX = 200


def like_pattern(text: str, what: str, *, prefix: bool = False) -> str:
    """A LIKE pattern (for ``ESCAPE '\\'``) matching ``text`` literally: anywhere, or as a prefix.
    Capped: SQLite refuses long patterns ("LIKE or GLOB pattern too complex")."""
    if len(text) > SEARCH_MAX:
        raise InvalidArgument(f"{what} must be at most {SEARCH_MAX} characters, got {len(text)}")
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%" if prefix else f"%{escaped}%"
