"""HTTP conditional and range request headers (RFC 9110 §13, §14), as pure functions.

Only what a blob download needs: one byte range (several ranges are answered
with the whole file, which RFC 9110 allows), ``If-None-Match`` and ``If-Range``
against a strong ETag. Nothing here raises on malformed input: a header that
cannot be read is ignored, as the RFC asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# An absurdly long number is still a number; past this many digits it is only "huge".
_MAX_DIGITS = 30
_HUGE = 10**_MAX_DIGITS
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_ETAG = re.compile(r'(W/)?"([^"]*)"')


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` through ``end`` of a file of ``size`` bytes, both inclusive."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """The range lies wholly past the end: answer 416 with ``Content-Range: bytes */size``."""

    size: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


RangeResult = ByteRange | Unsatisfiable | None
"""``None`` means: send the whole file with 200."""


def _number(text: str) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def parse_range(header: str | None, size: int) -> RangeResult:
    """Read a ``Range`` header against a file of ``size`` bytes.

    Absent, malformed, non-``bytes`` or multi-range headers give ``None`` (whole
    file). An empty file is always sent whole.
    """
    if not header or size <= 0:
        return None
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in spec.split(",")]
    parts = [p for p in parts if p]  # RFC 9110 list syntax allows empty elements
    if len(parts) != 1:
        return None
    first_text, dash, last_text = parts[0].partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:
        # bytes=-n: the last n bytes.
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0:
            return Unsatisfiable(size)
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = _number(first_text)
    if first is None:
        return None
    if last_text:
        last = _number(last_text)
        if last is None or last < first:
            return None
    else:
        last = size - 1
    if first >= size:
        return Unsatisfiable(size)
    return ByteRange(first, min(last, size - 1), size)


ANY: Final = "*"


def parse_etags(header: str | None) -> list[tuple[bool, str]] | str:
    """``If-None-Match`` / ``If-Match`` → ``"*"`` or a list of (weak, opaque-tag) pairs."""
    if not header:
        return []
    if header.strip() == ANY:
        return ANY
    return [(bool(m.group(1)), m.group(2)) for m in _ETAG.finditer(header)]


def _opaque(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


def if_none_match(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` matches ``etag`` (weak comparison): answer 304."""
    tags = parse_etags(header)
    if isinstance(tags, str):  # "*": any current representation
        return True
    want = _opaque(etag)
    return any(opaque == want for _, opaque in tags)


def if_range_allows(header: str | None, etag: str) -> bool:
    """True when the ``Range`` header may be honoured: no ``If-Range``, or one that matches strongly.

    A date or a weak tag never matches (this server sends no Last-Modified).
    """
    if header is None:
        return True
    # A strong comparison against exactly one tag: anything else (a date, W/"...", a list) fails.
    return header.strip() == etag and not etag.startswith("W/")


__all__ = ["ByteRange", "RangeResult", "Unsatisfiable", "if_none_match", "if_range_allows",
           "parse_etags", "parse_range"]
