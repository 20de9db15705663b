"""Where bundled, read-only data lives: migrations, web assets, .proto files.

Three layouts must work: a source checkout (editable install), an installed
wheel (data under ``fleetd/_data``) and a PyInstaller bundle (``sys._MEIPASS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


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
