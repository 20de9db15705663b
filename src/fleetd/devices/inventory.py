"""What a device reports about itself: its inventory and components, as they travel on the wire, and their limits."""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec

from ..core.errors import InvalidArgument
from ..core.fields import Int32


class Component(msgspec.Struct, kw_only=True):
    name: str
    version: str
    state: str = ""
    health: str = ""
    restarts: Int32 = 0


# Inventory limits (docs/protocol.md §13): it is stored per device, and Enroll takes it before any credential.
MAX_INVENTORY_BYTES = 32 * 1024
MAX_INVENTORY_TEXT = 256
MAX_ADDRESSES = 128
MAX_ADDRESS = 64
MAX_EXTRA = 100
MAX_EXTRA_KEY = 128
MAX_EXTRA_VALUE = 1024
_Text = Annotated[str, msgspec.Meta(max_length=MAX_INVENTORY_TEXT)]


class Inventory(msgspec.Struct, kw_only=True, omit_defaults=True):
    hostname: _Text = ""
    os: _Text = ""
    os_version: _Text = ""
    kernel: _Text = ""
    arch: _Text = ""
    model: _Text = ""
    addresses: Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS)]],
                         msgspec.Meta(max_length=MAX_ADDRESSES)] = []
    agent_version: _Text = ""
    extra: Annotated[dict[Annotated[str, msgspec.Meta(max_length=MAX_EXTRA_KEY)],
                          Annotated[str, msgspec.Meta(max_length=MAX_EXTRA_VALUE)]],
                     msgspec.Meta(max_length=MAX_EXTRA)] = {}


def check_inventory_size(encoded: bytes | str) -> None:
    """The whole inventory, as stored, within MAX_INVENTORY_BYTES (the per-field limits are on Inventory)."""
    if len(encoded) > MAX_INVENTORY_BYTES:
        raise InvalidArgument(f"the inventory is {len(encoded)} bytes encoded; at most {MAX_INVENTORY_BYTES} are "
                              "stored per device (fewer or shorter extra entries)")


def inventory_dict(inv: Inventory | None) -> dict[str, Any]:
    if not inv:
        return {}
    encoded = msgspec.json.encode(inv)
    check_inventory_size(encoded)
    return json.loads(encoded)
