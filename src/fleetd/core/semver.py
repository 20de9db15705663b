"""Semantic versions (semver.org 2.0.0): parsing and precedence."""

from __future__ import annotations

import re
from functools import lru_cache, total_ordering

from .errors import InvalidArgument

_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


@total_ordering
class Version:
    __slots__ = ("build", "major", "minor", "patch", "pre", "text")

    def __init__(self, text: str) -> None:
        m = _SEMVER.fullmatch(text) if len(text) <= 128 else None
        if not m:
            raise InvalidArgument(f"version {text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0 "
                                  "or 2.0.0-rc.1)")
        self.text = text
        self.major, self.minor, self.patch = int(m[1]), int(m[2]), int(m[3])
        self.pre = tuple(m[4].split(".")) if m[4] else ()
        self.build = m[5] or ""

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.pre)
        # A release sorts after all of its pre-releases.
        return self.major, self.minor, self.patch, 0 if self.pre else 1, pre

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


@lru_cache(maxsize=4096)
def _parsed(text: str) -> Version:
    return Version(text)


def collate(a: str, b: str) -> int:
    """SQLite collation ``semver`` (registered by db.connect): ``ORDER BY version COLLATE semver`` sorts by
    precedence, so a page of versions can be cut in SQL."""
    va, vb = _parsed(a), _parsed(b)
    return -1 if va < vb else 1 if vb < va else 0
