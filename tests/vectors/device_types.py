"""The device-type pattern vectors (tests/vectors/device_types.txt), read the way the RTOS shim's test reads them."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

FILE = Path(__file__).with_name("device_types.txt")


class Case(NamedTuple):
    verdict: str  # match | differ | valid | invalid
    pattern: str
    device_type: str  # match and differ only
    why: str


def cases() -> list[Case]:
    out = []
    for line in FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        verdict, pattern, *rest = line.split("\t")
        if verdict in ("match", "differ"):
            out.append(Case(verdict, pattern, rest[0], "\t".join(rest[1:])))
        else:
            assert verdict in ("valid", "invalid"), line
            out.append(Case(verdict, pattern, "", "\t".join(rest)))
    return out


def matching() -> list[Case]:
    return [c for c in cases() if c.verdict in ("match", "differ")]


def patterns() -> list[Case]:
    """Every pattern with its verdict: valid or invalid (a match/differ line's pattern is valid)."""
    return [c._replace(verdict="valid") if c.verdict in ("match", "differ") else c for c in cases()]
