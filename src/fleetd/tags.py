"""Device tags: key=value labels used for targeting."""

from __future__ import annotations

import re

from .errors import InvalidArgument

TAG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_VALUE = 128
MAX_TAGS = 64


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"a device has at most {MAX_TAGS} tags")
    for k, v in tags.items():
        if not TAG_KEY.match(k):
            raise InvalidArgument(f"tag key {k!r} must be 1-63 letters, digits and _.- starting with a letter or digit")
        if len(v) > MAX_VALUE or any(c in v for c in "=,\n\r\0"):
            raise InvalidArgument(f"tag value for {k!r} must be at most {MAX_VALUE} characters without = , or newlines")
    return tags


def parse_tag_args(items: list[str]) -> dict[str, str]:
    """['site=home', 'role=cam'] → {'site': 'home', 'role': 'cam'}."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidArgument(f"tag {item!r} must be written key=value")
        out[k.strip()] = v.strip()
    return check_tags(out)


def matches(device_tags: dict[str, str], selector: dict[str, str]) -> bool:
    """Every selector tag present with the same value (ANDed)."""
    return all(device_tags.get(k) == v for k, v in selector.items())
