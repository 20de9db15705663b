"""The ddi package's SQL: DDI devices, their integer ids, what a poll shows them, feedback, tokens
(docs/architecture.md, "Where SQL lives"). The devices and actions rows themselves are written through
devices/storage.py.

Queries of the poll and deployment paths are module-level constants, built once.
"""

from __future__ import annotations

import functools
import sqlite3

from ..devices.actions import DEPLOYING
from ..store.dialect import Dialect, dialect_of

# The kinds DDI delivers, as an SQL list (the values are the ActionKind members: no user input).
_DEPLOYABLE = ", ".join(f"'{k}'" for k in DEPLOYING)

# --- loading the in-memory state --------------------------------------------------------------------------------


def ddi_device_rows(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """(device_id, controller_id, config_requested) of every DDI device."""
    return conn.execute("SELECT device_id, controller_id, config_requested FROM ddi_devices")


def watched_device_ids(conn: sqlite3.Connection) -> set[str]:
    """Devices that fetched a deployment still open, or cancelled and not yet acknowledged."""
    return {r[0] for r in conn.execute(
        "SELECT DISTINCT s.device_id FROM ddi_action_state s JOIN actions a ON a.id = s.action_id "
        "WHERE s.fetched_at IS NOT NULL AND (a.open = 1 OR (a.state = 'cancelled' AND s.cancel_acked_at IS NULL))")}


def installed_bases(conn: sqlite3.Connection) -> dict[str, int]:
    """The DDI number of the last deployment each DDI device closed with success."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT a.device_id, n.num FROM actions a JOIN ddi_devices d ON d.device_id = a.device_id "
        "JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id WHERE a.state = 'succeeded' "
        f"AND a.kind IN ({_DEPLOYABLE}) AND a.artifact_id IS NOT NULL ORDER BY a.finished_at, n.num")}


# --- ids ------------------------------------------------------------------------------------------------------

_NUM_OF = "SELECT num FROM ddi_ids WHERE kind = ? AND ref = ?"


def num_of(conn: sqlite3.Connection, kind: str, ref: str) -> int | None:
    """The DDI number of an action or artifact (``kind``) by its fleetd id."""
    r = conn.execute(_NUM_OF, (kind, ref)).fetchone()
    return None if r is None else int(r[0])


def ref_of(conn: sqlite3.Connection, kind: str, num: int) -> str | None:
    """The fleetd id of an action or artifact (``kind``) by its DDI number."""
    r = conn.execute("SELECT ref FROM ddi_ids WHERE kind = ? AND num = ?", (kind, num)).fetchone()
    return None if r is None else str(r[0])


# --- DDI devices ----------------------------------------------------------------------------------------------

def insert_ddi_device(conn: sqlite3.Connection, device_id: str, controller_id: str, created_at: float) -> None:
    conn.execute("INSERT INTO ddi_devices (device_id, controller_id, created_at) VALUES (?, ?, ?)",
                 (device_id, controller_id, created_at))


def device_with_ddi(conn: sqlite3.Connection, hardware_id: str) -> sqlite3.Row | None:
    """id, status, poll_interval, device_type of the device with this hardware id, and ``ddi`` (its id again
    if it is a DDI device, else None)."""
    return conn.execute("SELECT d.id, d.status, d.poll_interval, d.device_type, x.device_id AS ddi FROM devices d "
                        "LEFT JOIN ddi_devices x ON x.device_id = d.id WHERE d.hardware_id = ?",
                        (hardware_id,)).fetchone()


def device_and_controller_id(conn: sqlite3.Connection, ref: str) -> sqlite3.Row | None:
    """The device by id or hardware id, with its controller_id (None if it is not a DDI device)."""
    return conn.execute("SELECT d.*, x.controller_id FROM devices d LEFT JOIN ddi_devices x ON x.device_id = d.id "
                        "WHERE d.id = ? OR d.hardware_id = ?", (ref, ref)).fetchone()


def controller_id_of(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The controller id of a DDI device; None for a device that does not use DDI."""
    r = conn.execute("SELECT controller_id FROM ddi_devices WHERE device_id = ?", (device_id,)).fetchone()
    return None if r is None else str(r[0])


def config_answered(conn: sqlite3.Connection, device_id: str) -> None:
    """The device sent its config data: polls stop asking for it."""
    conn.execute("UPDATE ddi_devices SET config_requested = 0 WHERE device_id = ?", (device_id,))


# --- what a poll shows ----------------------------------------------------------------------------------------

@functools.cache
def _cancel_to_show(d: Dialect) -> str:
    return ("SELECT n.num FROM actions a JOIN ddi_action_state s ON s.action_id = a.id "
            "JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id WHERE a.device_id = ? AND a.state = 'cancelled' "
            "AND s.fetched_at IS NOT NULL AND s.cancel_acked_at IS NULL "
            f"ORDER BY a.created_at, {d.insertion_order('id', 'a.')} LIMIT 1")


# A rollback without an artifact (no previous version known) has nothing a DDI device could install.
@functools.cache
def _deployment_to_show(d: Dialect) -> str:
    return ("SELECT n.num, a.state, s.fetched_at FROM actions a JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id "
            "LEFT JOIN ddi_action_state s ON s.action_id = a.id WHERE a.device_id = ? AND a.open = 1 "
            f"AND a.kind IN ({_DEPLOYABLE}) AND a.artifact_id IS NOT NULL "
            f"ORDER BY a.created_at, {d.insertion_order('id', 'a.')} LIMIT 1")


_FETCHED_OPEN = (
    "SELECT 1 FROM ddi_action_state s JOIN actions a ON a.id = s.action_id WHERE s.device_id = ? "
    "AND s.fetched_at IS NOT NULL AND a.open = 1 LIMIT 1")
_UNDELIVERABLE_WHERE = f"device_id = ? AND open = 1 AND (kind NOT IN ({_DEPLOYABLE}) OR artifact_id IS NULL)"
_HAS_UNDELIVERABLE = f"SELECT 1 FROM actions WHERE {_UNDELIVERABLE_WHERE} LIMIT 1"
_UNDELIVERABLE = f"SELECT id, kind FROM actions WHERE {_UNDELIVERABLE_WHERE}"


def cancel_to_show(conn: sqlite3.Connection, device_id: str) -> int | None:
    """The DDI number of the oldest cancelled action the device fetched and has not answered the cancellation of."""
    r = conn.execute(_cancel_to_show(dialect_of(conn)), (device_id,)).fetchone()
    return None if r is None else int(r[0])


def deployment_to_show(conn: sqlite3.Connection, device_id: str) -> sqlite3.Row | None:
    """(num, state, fetched_at) of the device's oldest open deployment with an artifact."""
    return conn.execute(_deployment_to_show(dialect_of(conn)), (device_id,)).fetchone()


def fetched_open(conn: sqlite3.Connection, device_id: str) -> bool:
    """The device fetched a deployment that is still open."""
    return conn.execute(_FETCHED_OPEN, (device_id,)).fetchone() is not None


def has_undeliverable(conn: sqlite3.Connection, device_id: str) -> bool:
    """The device has an open action DDI cannot send (another kind, or a rollback without an artifact)."""
    return conn.execute(_HAS_UNDELIVERABLE, (device_id,)).fetchone() is not None


def undeliverable(conn: sqlite3.Connection, device_id: str) -> list[sqlite3.Row]:
    """id and kind of the open actions :func:`has_undeliverable` finds."""
    return conn.execute(_UNDELIVERABLE, (device_id,)).fetchall()


# --- deployments ----------------------------------------------------------------------------------------------

_ACTION_BY_NUM = (
    "SELECT a.*, s.fetched_at, s.cancel_acked_at, s.cancel_stopped FROM ddi_ids n JOIN actions a ON a.id = n.ref "
    "LEFT JOIN ddi_action_state s ON s.action_id = a.id WHERE n.kind = 'action' AND n.num = ?")
_MARK_FETCHED = (
    "INSERT INTO ddi_action_state (action_id, device_id, fetched_at) VALUES (?, ?, ?) "
    "ON CONFLICT (action_id) DO UPDATE SET fetched_at = COALESCE(ddi_action_state.fetched_at, excluded.fetched_at)")
_HISTORY = ("SELECT CASE WHEN message = '' THEN state ELSE state || ': ' || message END FROM action_events "
            "WHERE action_id = ? ORDER BY id DESC LIMIT ?")
_ARTIFACT_WITH_HASHES = ("SELECT a.*, b.md5, b.sha1 FROM artifacts a JOIN blobs b ON b.sha256 = a.sha256 "
                         "WHERE a.id = ?")
_MODULE_ARTIFACT = (
    "SELECT a.*, b.md5, b.sha1 FROM ddi_ids n JOIN artifacts a ON a.id = n.ref "
    "JOIN blobs b ON b.sha256 = a.sha256 WHERE n.kind = 'artifact' AND n.num = ?")
_OPEN_ACTION_FOR = "SELECT 1 FROM actions WHERE device_id = ? AND artifact_id = ? AND open = 1 LIMIT 1"


def action_by_num(conn: sqlite3.Connection, num: int) -> sqlite3.Row | None:
    """The action with DDI number ``num``, with its fetched_at, cancel_acked_at and cancel_stopped."""
    return conn.execute(_ACTION_BY_NUM, (num,)).fetchone()


def mark_fetched(conn: sqlite3.Connection, action_id: str, device_id: str, at: float) -> None:
    """The device fetched the deployment (the first time counts)."""
    conn.execute(_MARK_FETCHED, (action_id, device_id, at))


def ack_cancel(conn: sqlite3.Connection, action_id: str, device_id: str, at: float, *, stopped: bool) -> None:
    """The device answered the cancellation of the action (``stopped``: it confirmed it stopped)."""
    conn.execute("INSERT INTO ddi_action_state (action_id, device_id, cancel_acked_at, cancel_stopped) "
                 "VALUES (?, ?, ?, ?) ON CONFLICT (action_id) DO UPDATE SET cancel_acked_at = "
                 "excluded.cancel_acked_at, cancel_stopped = excluded.cancel_stopped",
                 (action_id, device_id, at, int(stopped)))


def action_history(conn: sqlite3.Connection, action_id: str, count: int) -> list[str]:
    """The action's last ``count`` states, newest first, each with its message."""
    return [r[0] for r in conn.execute(_HISTORY, (action_id, count))]


def artifact_with_hashes(conn: sqlite3.Connection, artifact_id: str) -> sqlite3.Row | None:
    """The artifact with the md5 and sha1 of its blob."""
    return conn.execute(_ARTIFACT_WITH_HASHES, (artifact_id,)).fetchone()


def module_artifact(conn: sqlite3.Connection, num: int) -> sqlite3.Row | None:
    """The artifact with DDI (software module) number ``num``, with the md5 and sha1 of its blob."""
    return conn.execute(_MODULE_ARTIFACT, (num,)).fetchone()


def has_open_action_for(conn: sqlite3.Connection, device_id: str, artifact_id: str) -> bool:
    return conn.execute(_OPEN_ACTION_FOR, (device_id, artifact_id)).fetchone() is not None


def artifact_name_version(conn: sqlite3.Connection, artifact_id: str) -> sqlite3.Row | None:
    """name and version of an artifact."""
    return conn.execute("SELECT name, version FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()


# --- tokens ---------------------------------------------------------------------------------------------------

def insert_gateway_token(conn: sqlite3.Connection, *, token_id: str, secret_hash: bytes, device_type: str,
                         tags: str, description: str, created_by: str | None, created_at: float) -> None:
    """A gateway token; ``tags`` JSON text."""
    conn.execute("INSERT INTO ddi_tokens (id, kind, secret_hash, device_type, tags, description, created_by, "
                 "created_at) VALUES (?, 'gateway', ?, ?, ?, ?, ?, ?)",
                 (token_id, secret_hash, device_type, tags, description, created_by, created_at))


def insert_target_token(conn: sqlite3.Connection, *, token_id: str, secret_hash: bytes, device_id: str,
                        created_by: str | None, created_at: float) -> None:
    conn.execute("INSERT INTO ddi_tokens (id, kind, secret_hash, device_id, created_by, created_at) "
                 "VALUES (?, 'target', ?, ?, ?, ?)", (token_id, secret_hash, device_id, created_by, created_at))


def gateway_token(conn: sqlite3.Connection, token_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM ddi_tokens WHERE id = ? AND kind = 'gateway'", (token_id,)).fetchone()


def gateway_tokens(conn: sqlite3.Connection, *, include_revoked: bool) -> list[sqlite3.Row]:
    """The gateway tokens, oldest first."""
    sql = "SELECT * FROM ddi_tokens WHERE kind = 'gateway'"
    if not include_revoked:
        sql += " AND revoked_at IS NULL"
    return conn.execute(sql + " ORDER BY created_at").fetchall()


def revoke_token(conn: sqlite3.Connection, token_id: str, at: float) -> None:
    conn.execute("UPDATE ddi_tokens SET revoked_at = ? WHERE id = ?", (at, token_id))


def revoke_target_tokens(conn: sqlite3.Connection, device_id: str, at: float) -> list[bytes]:
    """Revoke the device's live target tokens; the hashes of their secrets."""
    rows = conn.execute("SELECT secret_hash FROM ddi_tokens WHERE device_id = ? AND kind = 'target' "
                        "AND revoked_at IS NULL", (device_id,)).fetchall()
    conn.execute("UPDATE ddi_tokens SET revoked_at = ? WHERE device_id = ? AND kind = 'target' "
                 "AND revoked_at IS NULL", (at, device_id))
    return [bytes(r[0]) for r in rows]


def live_tokens(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """id, kind, secret_hash, device_id, device_type and tags of every token not revoked."""
    return conn.execute("SELECT id, kind, secret_hash, device_id, device_type, tags FROM ddi_tokens "
                        "WHERE revoked_at IS NULL")
