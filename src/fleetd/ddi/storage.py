"""The ddi package's SQL (docs/architecture.md, "Where SQL lives")."""

from __future__ import annotations

import sqlite3


def controller_id_of(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The controller id of a DDI device; None for a device that does not use DDI."""
    r = conn.execute("SELECT controller_id FROM ddi_devices WHERE device_id = ?", (device_id,)).fetchone()
    return None if r is None else str(r[0])
