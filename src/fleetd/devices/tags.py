"""Device tags: key=value labels used for targeting."""

from __future__ import annotations

from ..core.errors import InvalidArgument
from ..core.names import TAG_KEY, TAG_VALUE

MAX_TAGS = 64


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"a device has at most {MAX_TAGS} tags")
    for k, v in tags.items():
        TAG_KEY.check(k)
        TAG_VALUE.check(v, f"tag value for {k!r}")
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
