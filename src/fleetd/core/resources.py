"""Where bundled, read-only data lives: migrations, web assets, .proto files.

Three layouts must work: a source checkout (editable install), an installed
wheel (data under ``fleetd/_data``) and a PyInstaller bundle (``sys._MEIPASS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This module is fleetd/core/resources.py; the data sits relative to the fleetd package itself.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """Return the folder holding bundled data ``name`` (``migrations`` or ``web``)."""
    candidates = [_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent.parent / name]
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        candidates.insert(0, Path(meipass) / "fleetd" / "_data" / name)
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"bundled data folder {name!r} not found (looked in {candidates})")


def proto_dir() -> Path:
    return _PACKAGE_DIR / "proto"


def agent_file(name: str) -> Path | None:
    """A file the server hands to devices installing the agent, or None when it is missing.

    ``name`` is ``fleet-agent.pyz``, ``fleet-agent-launcher.py`` or ``install.sh``.
    A wheel or the binary holds all three in ``data_dir("agent")``; a source
    checkout has ``agent/install.sh`` as checked in and the other two in
    ``dist/``, where ``make agent`` builds them.
    """
    try:
        folder = data_dir("agent")
    except FileNotFoundError:
        return None
    source_root = _PACKAGE_DIR.parent.parent
    folders = [folder, source_root / "dist"] if folder == source_root / "agent" else [folder]
    for d in folders:
        if (d / name).is_file():
            return d / name
    return None
