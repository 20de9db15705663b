"""Effects: what a committed write changes outside the database (the event stream, the in-memory caches).

A write function records them on its connection (:func:`fleetd.store.database.effect`) inside its transaction; the
store runs them after the commit, only if it committed, in the order they were recorded, on the event loop
of the caller that awaited the write. They are plain values — a kind (the class) and its data — never
closures, so that one day they can also be shipped to other replicas; each kind has its handlers in one
table (``Fleet._effect_handlers``).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Effect(msgspec.Struct, frozen=True, tag=True, tag_field="kind"):
    """Base of every effect kind; the tag (the class name) is its kind on the wire."""


class Publish(Effect, frozen=True):
    """An event for the event bus (``/v1/events``, webhooks of alerts)."""

    type: str
    data: dict[str, Any]
