"""The remote package's SQL (docs/architecture.md, "Where SQL lives"): what the audit log says of expired
terminal recordings (recording.py)."""

from __future__ import annotations

import json
import sqlite3

from ..store.dialect import dialect_of


def mark_recordings_expired(conn: sqlite3.Connection, session_ids: list[str], when: str) -> int:
    """Set ``recording_expired`` (``when``, ISO 8601) in the ``device.remote_session`` audit entries of these
    sessions that name a recording; how many entries changed."""
    d = dialect_of(conn)
    session = d.json_member("details", "session", "text")
    return int(conn.execute(
        f"UPDATE audit_log SET details = {d.json_set_key('details')} WHERE action = 'device.remote_session' "
        f"AND {d.in_json_list(session)} AND {d.json_member('details', 'recording', 'text')} IS NOT NULL",
        ("recording_expired", when, json.dumps(session_ids))).rowcount)
