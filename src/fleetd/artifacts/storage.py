"""The artifacts' queries (docs/architecture.md, "Where SQL lives"): the catalog, and where an artifact is used."""

from __future__ import annotations

import sqlite3

from ..store.database import may_fail
from ..store.dialect import dialect_of
from ..store.where import Where

_SELECT = "SELECT a.*, b.md5, b.sha1 FROM artifacts a JOIN blobs b ON b.sha256 = a.sha256"


def artifact_exists(conn: sqlite3.Connection, name: str, version: str) -> bool:
    return conn.execute("SELECT 1 FROM artifacts WHERE name = ? AND version = ?", (name, version)).fetchone() \
        is not None


def insert_artifact(conn: sqlite3.Connection, *, artifact_id: str, name: str, version: str, kind: str,
                    device_types: str, sha256: str, size: int, file_name: str, install_spec: str | None,
                    manifest: bytes, signature: str, created_by: str | None, created_at: float) -> None:
    """``device_types`` and ``install_spec`` as JSON text."""
    conn.execute(
        "INSERT INTO artifacts (id, name, version, kind, device_types, sha256, size, file_name, install_spec, "
        "manifest, signature, created_by, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (artifact_id, name, version, kind, device_types, sha256, size, file_name, install_spec, manifest,
         signature, created_by, created_at))


def artifact_row(conn: sqlite3.Connection, artifact_id: str) -> sqlite3.Row | None:
    """The artifact with its blob's md5 and sha1."""
    row: sqlite3.Row | None = conn.execute(f"{_SELECT} WHERE a.id = ?", (artifact_id,)).fetchone()
    return row


def artifact_row_by_version(conn: sqlite3.Connection, name: str, version: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(f"{_SELECT} WHERE a.name = ? AND a.version = ?",
                                           (name, version)).fetchone()
    return row


def newest_versions(conn: sqlite3.Connection, name: str, limit: int) -> list[str]:
    """The versions of artifact ``name``, newest (by version precedence) first."""
    return [r[0] for r in conn.execute(f"SELECT version FROM artifacts WHERE name = ? ORDER BY "
                                       f"{dialect_of(conn).semver_order('version')} DESC LIMIT ?", (name, limit))]


def artifact_rows_page(conn: sqlite3.Connection, *, name: str, kind: str, device_type: str, limit: int,
                       offset: int) -> tuple[list[sqlite3.Row], int]:
    """One page of artifact rows (empty filters match all), by name then version precedence, and how many
    match."""
    d = dialect_of(conn)
    w = Where()
    w.equal("a.name", name)
    w.equal("a.kind", kind)
    if device_type:  # the artifacts a device of this type may install
        w.add(d.json_list_star_matches("a.device_types"), device_type)
    total = conn.execute(f"SELECT COUNT(*) FROM artifacts a{w.sql}", w.args).fetchone()[0]
    rows = conn.execute(f"{_SELECT}{w.sql} ORDER BY a.name, {d.semver_order('a.version')}, a.version "
                        "LIMIT ? OFFSET ?", [*w.args, limit, offset]).fetchall()
    return rows, int(total)


def action_counts_by_state(conn: sqlite3.Connection, artifact_id: str) -> dict[str, int]:
    """The actions that install (or roll back to) the artifact, counted by state."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT state, COUNT(*) FROM actions WHERE artifact_id = ? GROUP BY state ORDER BY state", (artifact_id,))}


def open_action_count(conn: sqlite3.Connection, artifact_id: str) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM actions WHERE artifact_id = ? AND open = 1",
                            (artifact_id,)).fetchone()[0])


def open_actions(conn: sqlite3.Connection, artifact_id: str) -> list[sqlite3.Row]:
    """The artifact's open actions (id, device_id, state), oldest first."""
    return conn.execute("SELECT id, device_id, state FROM actions WHERE artifact_id = ? AND open = 1 "
                        f"ORDER BY created_at, {dialect_of(conn).insertion_order('id')}", (artifact_id,)).fetchall()


def installed_count(conn: sqlite3.Connection, name: str, version: str) -> int:
    """Devices that report this version of the component as installed."""
    return int(conn.execute("SELECT COUNT(*) FROM device_components WHERE name = ? AND version = ?",
                            (name, version)).fetchone()[0])


def installed_on(conn: sqlite3.Connection, name: str, version: str, limit: int) -> list[str]:
    """The first ``limit`` of those devices, by id."""
    return [r[0] for r in conn.execute(
        "SELECT device_id FROM device_components WHERE name = ? AND version = ? ORDER BY device_id LIMIT ?",
        (name, version, limit))]


def rollback_targets_on(conn: sqlite3.Connection, name: str, version: str) -> list[str]:
    """Devices whose known-good (previous) version of the component is this one, by id."""
    return [r[0] for r in conn.execute(
        "SELECT device_id FROM device_components WHERE name = ? AND previous_version = ? ORDER BY device_id",
        (name, version))]


def detach_from_actions(conn: sqlite3.Connection, artifact_id: str, label: str) -> None:
    """Actions that name the artifact keep its NAME@VERSION in their params and lose the reference."""
    conn.execute(f"UPDATE actions SET params = {dialect_of(conn).json_set_key('params')}, artifact_id = NULL "
                 "WHERE artifact_id = ?", ("artifact", label, artifact_id))


def delete_artifact(conn: sqlite3.Connection, artifact_id: str) -> bool:
    """Delete the artifact's row; False (and nothing deleted) while another row still references it."""
    try:
        with may_fail(conn):
            conn.execute("DELETE FROM artifacts WHERE id = ?", (artifact_id,))
    except sqlite3.IntegrityError:
        return False
    return True


def set_offline_signatures(conn: sqlite3.Connection, artifact_id: str, signatures: str) -> None:
    """``signatures``: the JSON list."""
    conn.execute("UPDATE artifacts SET offline_signatures = ? WHERE id = ?", (signatures, artifact_id))


# --- upload sessions in the database (replicas on one PostgreSQL database: artifacts/uploads.py) -------------------

def delete_expired_uploads(conn: sqlite3.Connection, at: float) -> None:
    conn.execute("DELETE FROM upload_sessions WHERE expires_at <= ?", (at,))


def upload_counts(conn: sqlite3.Connection, owner_kind: str, owner_id: str) -> tuple[int, int]:
    """Upload sessions open in all, and of this owner."""
    row = conn.execute("SELECT COUNT(*), COALESCE(SUM(CASE WHEN owner_kind = ? AND owner_id = ? THEN 1 ELSE 0 END), 0) "
                       "FROM upload_sessions", (owner_kind, owner_id)).fetchone()
    return int(row[0]), int(row[1])


def insert_upload(conn: sqlite3.Connection, *, upload_id: str, owner_kind: str, owner_id: str, artifact: bytes,
                  expires_at: float) -> None:
    """``artifact``: the pending artifact, JSON."""
    conn.execute("INSERT INTO upload_sessions (id, owner_kind, owner_id, artifact, expires_at) VALUES (?, ?, ?, ?, ?)",
                 (upload_id, owner_kind, owner_id, artifact.decode(), expires_at))


def claim_upload(conn: sqlite3.Connection, upload_id: str, owner_kind: str, owner_id: str,
                 at: float) -> sqlite3.Row | None:
    """Delete the owner's unexpired upload session and return its artifact (JSON) and expires_at; None if there is
    no such row (another claim took it first: the delete is the claim)."""
    row: sqlite3.Row | None = conn.execute(
        "DELETE FROM upload_sessions WHERE id = ? AND owner_kind = ? AND owner_id = ? AND expires_at > ? "
        "RETURNING artifact, expires_at", (upload_id, owner_kind, owner_id, at)).fetchone()
    return row


def upload_exists(conn: sqlite3.Connection, upload_id: str, at: float) -> bool:
    return conn.execute("SELECT 1 FROM upload_sessions WHERE id = ? AND expires_at > ?",
                        (upload_id, at)).fetchone() is not None
