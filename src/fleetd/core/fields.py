"""Bounded number types for the fields of request messages.

Every integer a client sends has a range (tests/http/test_request_input.py checks each request field): SQLite
stores at most 64-bit integers, and a time computed from an unbounded number of seconds passes year 9999.
The integer types follow the .proto declarations (int32, int64), so JSON and protobuf clients agree.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .errors import InvalidArgument

Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
# Where a page of a list starts (an int32 in the .proto).
Offset = Annotated[int, Meta(ge=0, le=2**31 - 1)]
# How long something lasts (token and key lifetimes, soak and timeout seconds): at most a century.
MAX_SECONDS = 100 * 365 * 86400
Seconds = Annotated[int, Meta(ge=0, le=MAX_SECONDS)]
SecondsFloat = Annotated[float, Meta(ge=0, le=MAX_SECONDS)]


def page_limit(value: int, default: int, maximum: int) -> int:
    """A list call's ``limit``: 0 (proto3's unset) means ``default``; at most ``maximum``."""
    n = value or default
    if not 1 <= n <= maximum:
        raise InvalidArgument(f"limit must be 1..{maximum} (0 for {default}), got {value}")
    return n
