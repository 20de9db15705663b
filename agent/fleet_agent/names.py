"""The names the agent checks before it uses them (paths, unit files, the enrollment request), each matched whole.

``re.fullmatch``: ``re.match`` with a ``$`` anchor also accepts a trailing newline. The rules are the
server's (fleetd.core.names, which the agent may not import); tests/agent/test_names.py holds the two together.
"""

from __future__ import annotations

import re
import unicodedata

# Bidirectional formatting characters: they make a name display differently from what it is.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
QUOTE_MAX = 140  # how much of a refused value a message repeats


class BadName(ValueError):
    """A name that is not of its kind; the message says what one looks like."""


class Kind:
    """A kind of name: its pattern and the rule a message states."""

    def __init__(self, what: str, pattern: str, rule: str) -> None:
        self.what = what
        self.pattern = re.compile(pattern)
        self.rule = rule

    def ok(self, value: str) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def check(self, value: str) -> str:
        if not self.ok(value):
            raise BadName(f"{self.what} {str(value)[:QUOTE_MAX]!r} must be {self.rule}")
        return value


HARDWARE_ID = Kind("hardware id", r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
                   "1-128 characters of A-Z a-z 0-9 _ . : -, starting with a letter or digit")
DEVICE_TYPE = Kind("device type", r"[a-z0-9][a-z0-9_.-]{0,63}",
                   "1-64 characters of a-z 0-9 _ . -, starting with a letter or digit (for example linux-aarch64)")
# What a signed manifest's device_types may hold: a device type, or a pattern in which * stands for any run of
# device-type characters (docs/protocol.md "Device types and patterns"; tests/vectors/device_types.txt).
DEVICE_TYPE_PATTERN = Kind(
    "device type", r"(?!.*\*\*)(?=.*[a-z0-9])[a-z0-9*][a-z0-9_.*-]{0,63}",
    "a device type or a pattern of its characters where * stands for any run of them (for example linux-*)")


def device_type_matches(pattern: str, device_type: str) -> bool:
    """Whether a manifest's device-type ``pattern`` covers ``device_type``: ``*`` matches any run of characters,
    possibly empty, every other character only itself; greedy with a return to the last ``*``. The server's
    rule (fleetd.core.names.device_type_matches), on the same vectors."""
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


# An app's name is its folder under apps/ and part of its systemd unit's name.
APP_NAME = Kind("app name", r"[a-z0-9][a-z0-9_.-]{0,63}",
                "1-64 characters of a-z 0-9 _ . -, starting with a letter or digit")
# A version is a folder name beside the app's ``current`` link.
VERSION = Kind("version", r"[0-9A-Za-z][0-9A-Za-z.+-]{0,127}",
               "1-128 characters of A-Z a-z 0-9 . + -, starting with a letter or digit")
ENV_NAME = Kind("env name", r"[A-Za-z_][A-Za-z0-9_]{0,127}",
                "1-128 characters of A-Z a-z 0-9 _, not starting with a digit")
# The download's file name in staging/.
SHA256 = Kind("sha256", r"[0-9a-f]{64}", "64 lowercase hex digits")

FILE_NAME_MAX = 255
# The agent keeps an app's signed manifest under this name beside its files.
MANIFEST_FILE = ".fleet-manifest.json"
RESERVED_FILE_NAMES = frozenset({".", "..", MANIFEST_FILE})


def check_file_name(value: str) -> str:
    """A file name the server gives: one path component inside the version's folder, not the agent's own."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > FILE_NAME_MAX:
        raise BadName(f"file name {str(value)[:QUOTE_MAX]!r} must be 1-{FILE_NAME_MAX} bytes (UTF-8)")
    if "/" in value or "\\" in value:
        raise BadName(f"file name {value[:QUOTE_MAX]!r} must not contain / or \\")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs") or c in BIDI_CONTROLS), None)
    if bad is not None:
        raise BadName(f"file name {value[:QUOTE_MAX]!r} must not contain control or bidirectional-formatting "
                      f"characters (found U+{ord(bad):04X})")
    if value in RESERVED_FILE_NAMES:
        raise BadName(f"file name {value!r} must not be . or .. or {MANIFEST_FILE} (the agent's own record)")
    return value
