"""Update modules on the server's side: which devices can install an artifact (docs/agent.md "Update modules").

An agent lists the modules it has in its inventory (``extra.update_modules``, comma-separated). A deploy of an
artifact whose module is not ``app`` is refused for devices that do not list it: they would only fail the action.
Devices that list no modules at all (an agent from before update modules, the RTOS shim, the simulator) have
``app`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..core.errors import FailedPrecondition
from .catalog import BUILTIN_MODULES, DEFAULT_MODULE, Artifact, module_of

INVENTORY_KEY = "update_modules"
LISTED = 5  # devices a refusal names


def modules_in(inventory: Any) -> set[str]:
    """The modules an inventory (a dict or its JSON text) lists; ``app`` when it lists none."""
    if isinstance(inventory, (str, bytes)):
        try:
            inventory = json.loads(inventory or "{}")
        except ValueError:
            inventory = {}
    extra = inventory.get("extra") if isinstance(inventory, dict) else None
    listed = str((extra or {}).get(INVENTORY_KEY) or "") if isinstance(extra, dict) else ""
    return {m.strip() for m in listed.split(",") if m.strip()} or {DEFAULT_MODULE}


def lacks_module(module: str, inventory: Any) -> bool:
    """Whether a device with this inventory cannot install with ``module`` (never for ``app``)."""
    return module not in ("", DEFAULT_MODULE) and module not in modules_in(inventory)


def how_to_get(module: str, them: str = "them") -> str:
    """What gives devices (``them``) ``module``, for a refusal or a skipped device."""
    if module == "container":  # an agent lists it only where podman or docker is installed
        return (f"install podman or docker on {them} (fleet-agent lists the container module only where one is) "
                "and update fleet-agent if it is older than the module")
    if module in BUILTIN_MODULES:
        return f"update fleet-agent on {them} (the {module} module is built into newer agents)"
    return (f"install the module on {them} (an executable named {module} in the agent's modules directory, "
            f"FLEET_AGENT_MODULES_DIR, default /usr/share/fleet-agent/modules) and let {them} check in")


def check_devices_have_module(art: Artifact, devices: Iterable[tuple[str, Any]]) -> None:
    """Refuse (all or none) when any of ``devices`` — (id, inventory) — lacks the artifact's module."""
    module = module_of(art)
    if module in ("", DEFAULT_MODULE):
        return
    lacking = [device_id for device_id, inventory in devices if lacks_module(module, inventory)]
    if not lacking:
        return
    listed = ", ".join(lacking[:LISTED]) + (f" and {len(lacking) - LISTED} more" if len(lacking) > LISTED else "")
    raise FailedPrecondition(f"{art.name}@{art.version} is installed by the {module!r} update module, which "
                             f"{len(lacking)} device(s) do not have: {listed}; {how_to_get(module)}, or leave them "
                             "out ('fleetd devices show ID' lists a device's modules)")


__all__ = ["INVENTORY_KEY", "check_devices_have_module", "how_to_get", "lacks_module", "modules_in"]
