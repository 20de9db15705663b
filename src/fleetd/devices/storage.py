"""The devices package's SQL: devices, their components, join tokens and actions (docs/architecture.md, "Where
SQL lives").

Small named functions that take the store's connection and plain values and return rows or plain values; the
rules (who may do what, which error) stay with their callers. Queries of the check-in path are module-level
constants, built once.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from ..store.dialect import Dialect, dialect_of
from ..store.where import Where

CHUNK = 500  # ids per IN (...) list


def _marks(n: int) -> str:
    """The placeholders of an IN list of ``n``; none: ``NULL``, which matches nothing (PostgreSQL has no ``IN ()``)."""
    return ",".join("?" * n) or "NULL"


# --- devices -------------------------------------------------------------------------------------------------

_DEVICE_AUTH = "SELECT public_key, status, auth_epoch FROM devices WHERE id = ?"
_DEVICE_RECORD = "SELECT status, poll_interval, device_type, auth_epoch FROM devices WHERE id = ?"


def device_by_id(conn: sqlite3.Connection, device_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()


def device_by_id_or_hardware_id(conn: sqlite3.Connection, ref: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM devices WHERE id = ? OR hardware_id = ?", (ref, ref)).fetchone()


def device_by_hardware_id(conn: sqlite3.Connection, hardware_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM devices WHERE hardware_id = ?", (hardware_id,)).fetchone()


def devices_named(conn: sqlite3.Connection, name: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchall()


def device_auth(conn: sqlite3.Connection, device_id: str) -> sqlite3.Row | None:
    """public_key, status and auth_epoch of a device (Authenticate)."""
    return conn.execute(_DEVICE_AUTH, (device_id,)).fetchone()


def device_record(conn: sqlite3.Connection, device_id: str) -> sqlite3.Row | None:
    """status, poll_interval, device_type and auth_epoch: what the hub keeps of a device."""
    return conn.execute(_DEVICE_RECORD, (device_id,)).fetchone()


def runtime_rows(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """(id, status, poll_interval, device_type, auth_epoch, last_seen) of every device, sorted by id, as plain
    tuples (a third cheaper than sqlite3.Row for the 100,000 rows of a start)."""
    cur = conn.cursor()
    cur.row_factory = None
    # ORDER BY +id (SQLite's Dialect.sorted_scan): a table scan sorted by SQLite (walking the id index, one table
    # lookup a row, costs twice as much), so that the directory needs no sort of its own (a transient 4 MiB at
    # 100,000 devices).
    return cur.execute("SELECT id, status, poll_interval, device_type, auth_epoch, last_seen FROM devices "
                       f"ORDER BY {dialect_of(conn).sorted_scan('id')}")


def claim_code_taken(conn: sqlite3.Connection, code: str) -> bool:
    return conn.execute("SELECT 1 FROM devices WHERE claim_code = ?", (code,)).fetchone() is not None


def count_pending_devices(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM devices WHERE status = 'pending'").fetchone()[0])


def pending_device_by_claim_code(conn: sqlite3.Connection, code: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM devices WHERE claim_code = ? AND status = 'pending'", (code,)).fetchone()


def silent_pending_devices(conn: sqlite3.Connection, cutoff: float) -> list[sqlite3.Row]:
    """id and hardware_id of the pending devices enrolled without a token and not heard from since ``cutoff``."""
    return conn.execute("SELECT id, hardware_id FROM devices WHERE status = 'pending' AND token_id IS NULL "
                        "AND COALESCE(last_seen, created_at) < ?", (cutoff,)).fetchall()


def insert_device(conn: sqlite3.Connection, *, device_id: str, hardware_id: str, name: str, device_type: str,
                  public_key: bytes, status: str, claim_code: str | None, token_id: str | None, tags: str,
                  inventory: str, poll_interval: int, created_at: float, enrolled_at: float | None,
                  last_addr: str | None) -> None:
    """A new device; ``tags`` and ``inventory`` are JSON text."""
    conn.execute(
        "INSERT INTO devices (id, hardware_id, name, device_type, public_key, status, claim_code, token_id, tags, "
        "inventory, poll_interval, created_at, enrolled_at, last_addr) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (device_id, hardware_id, name, device_type, public_key, status, claim_code, token_id, tags, inventory,
         poll_interval, created_at, enrolled_at, last_addr))


def reenroll_device(conn: sqlite3.Connection, device_id: str, *, public_key: bytes, token_id: str, tags: str,
                    device_type: str, auth_epoch: int, enrolled_at: float, last_addr: str | None) -> None:
    """An enrolled device enrolls again with a token: active, with this key, tags (JSON text) and epoch."""
    conn.execute("UPDATE devices SET public_key = ?, status = 'active', claim_code = NULL, token_id = ?, "
                 "tags = ?, device_type = ?, auth_epoch = ?, enrolled_at = ?, last_addr = ? WHERE id = ?",
                 (public_key, token_id, tags, device_type, auth_epoch, enrolled_at, last_addr, device_id))


def activate_claimed(conn: sqlite3.Connection, device_id: str, *, enrolled_at: float, name: str, tags: str) -> None:
    conn.execute("UPDATE devices SET status = 'active', claim_code = NULL, enrolled_at = ?, name = ?, tags = ? "
                 "WHERE id = ?", (enrolled_at, name, tags, device_id))


def revoke_device(conn: sqlite3.Connection, device_id: str) -> None:
    """Revoked, its claim code gone, its auth epoch bumped (so its bearer tokens stop working)."""
    conn.execute("UPDATE devices SET status = 'revoked', claim_code = NULL, auth_epoch = auth_epoch + 1 "
                 "WHERE id = ?", (device_id,))


def update_device(conn: sqlite3.Connection, device_id: str, *, name: str, tags: str, poll_interval: int) -> None:
    conn.execute("UPDATE devices SET name = ?, tags = ?, poll_interval = ? WHERE id = ?",
                 (name, tags, poll_interval, device_id))


def set_type_and_tags(conn: sqlite3.Connection, device_id: str, device_type: str, tags: str) -> None:
    conn.execute("UPDATE devices SET device_type = ?, tags = ? WHERE id = ?", (device_type, tags, device_id))


def set_inventory_and_type(conn: sqlite3.Connection, device_id: str, inventory: str, device_type: str) -> None:
    conn.execute("UPDATE devices SET inventory = ?, device_type = ? WHERE id = ?",
                 (inventory, device_type, device_id))


def delete_device(conn: sqlite3.Connection, device_id: str) -> None:
    conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))


def _device_filter(conn: sqlite3.Connection, status: str | None, device_type: str | None,
                   tags: dict[str, str] | None, pattern: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause of a device list: tags ANDed (keys checked by the caller), ``pattern`` a LIKE pattern
    (``ESCAPE '\\'``) on id, name or hardware id."""
    w = Where()
    w.equal("status", status)
    w.equal("device_type", device_type)
    key_equals = dialect_of(conn).json_key_equals("tags")
    for k, v in (tags or {}).items():
        w.add(key_equals, k, v)
    if pattern:
        w.add("(id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\' OR hardware_id LIKE ? ESCAPE '\\')", *[pattern] * 3)
    return w.sql, w.args


def device_ids_and_types(conn: sqlite3.Connection, *, status: str | None, tags: dict[str, str] | None
                         ) -> list[sqlite3.Row]:
    """(id, device_type) of the devices with this status and these tags, oldest first."""
    clause, args = _device_filter(conn, status, None, tags, None)
    return conn.execute(f"SELECT id, device_type FROM devices{clause} ORDER BY created_at, id", args).fetchall()


def device_page(conn: sqlite3.Connection, *, status: str | None, device_type: str | None,
                tags: dict[str, str] | None, pattern: str | None, limit: int, offset: int
                ) -> tuple[list[sqlite3.Row], int]:
    """One page of the matching devices, oldest first, and how many match."""
    clause, args = _device_filter(conn, status, device_type, tags, pattern)
    total = conn.execute(f"SELECT COUNT(*) FROM devices{clause}", args).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM devices{clause} ORDER BY created_at, id LIMIT ? OFFSET ?",
                        [*args, limit, offset]).fetchall()
    return rows, int(total)


# --- check-ins: last contact, inventory, components -------------------------------------------------------

# A contact without an address (a check-in over MQTT) keeps the one last seen.
_RECORD_SEEN = "UPDATE devices SET last_seen = ?, last_addr = COALESCE(?, last_addr) WHERE id = ?"
_SET_INVENTORY = "UPDATE devices SET inventory = ? WHERE id = ?"
_COMPONENTS = "SELECT * FROM device_components WHERE device_id = ? ORDER BY name"
_UPSERT_COMPONENT = (
    "INSERT INTO device_components (device_id, name, version, previous_version, state, health, restarts, "
    "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device_id, name) DO UPDATE SET version = excluded.version, "
    "previous_version = excluded.previous_version, state = excluded.state, health = excluded.health, "
    "restarts = excluded.restarts, updated_at = excluded.updated_at")
_DELETE_COMPONENT = "DELETE FROM device_components WHERE device_id = ? AND name = ?"


def record_seen(conn: sqlite3.Connection, seen: Iterable[tuple[float, str | None, str]]) -> None:
    """Last contact of many devices: (last_seen, last_addr, device_id) each."""
    conn.executemany(_RECORD_SEEN, seen)


def seen_since(conn: sqlite3.Connection, since: float) -> list[tuple[str, float, str | None]]:
    """(device id, last seen, last address) of the devices whose stored last contact is ``since`` or later."""
    return [(r[0], r[1], r[2]) for r in
            conn.execute("SELECT id, last_seen, last_addr FROM devices WHERE last_seen >= ?", (since,))]


def set_inventory(conn: sqlite3.Connection, device_id: str, inventory: str) -> None:
    conn.execute(_SET_INVENTORY, (inventory, device_id))


def component_rows(conn: sqlite3.Connection, device_id: str) -> list[sqlite3.Row]:
    """The components a device runs, by name."""
    return conn.execute(_COMPONENTS, (device_id,)).fetchall()


def component_rows_of(conn: sqlite3.Connection, device_ids: list[str]) -> list[sqlite3.Row]:
    """The components of many devices (a page of the device list), by device and name."""
    rows: list[sqlite3.Row] = []
    for i in range(0, len(device_ids), CHUNK):
        chunk = device_ids[i:i + CHUNK]
        rows += conn.execute(f"SELECT * FROM device_components WHERE device_id IN ({_marks(len(chunk))}) "
                             "ORDER BY device_id, name", chunk)
    return rows


def component(conn: sqlite3.Connection, device_id: str, name: str) -> sqlite3.Row | None:
    """version, previous_version, state and health of one component of a device."""
    return conn.execute("SELECT version, previous_version, state, health FROM device_components "
                        "WHERE device_id = ? AND name = ?", (device_id, name)).fetchone()


def upsert_component(conn: sqlite3.Connection, device_id: str, name: str, version: str,
                     previous_version: str | None, state: str, health: str, restarts: int, updated_at: float
                     ) -> None:
    """Every column of the component's row, created or replaced."""
    conn.execute(_UPSERT_COMPONENT, (device_id, name, version, previous_version, state, health, restarts,
                                     updated_at))


def delete_component(conn: sqlite3.Connection, device_id: str, name: str) -> None:
    conn.execute(_DELETE_COMPONENT, (device_id, name))


# --- join tokens ---------------------------------------------------------------------------------------------

def insert_join_token(conn: sqlite3.Connection, *, token_id: str, secret_hash: bytes, description: str, tags: str,
                      max_uses: int | None, expires_at: float | None, created_by: str | None, created_at: float,
                      device_id: str | None) -> None:
    conn.execute("INSERT INTO join_tokens (id, secret_hash, description, tags, max_uses, expires_at, created_by, "
                 "created_at, device_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (token_id, secret_hash, description, tags, max_uses, expires_at, created_by, created_at,
                  device_id))


def join_token(conn: sqlite3.Connection, token_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM join_tokens WHERE id = ?", (token_id,)).fetchone()


def join_token_page(conn: sqlite3.Connection, *, usable_at: float | None, limit: int, offset: int
                    ) -> tuple[list[sqlite3.Row], int]:
    """One page of the join tokens, newest first, and how many there are; with ``usable_at``, only those not
    revoked, expired or used up at that time."""
    clause, args = "", []
    if usable_at is not None:
        clause = (" WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) "
                  "AND (max_uses IS NULL OR uses < max_uses)")
        args.append(usable_at)
    total = conn.execute(f"SELECT COUNT(*) FROM join_tokens{clause}", args).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM join_tokens{clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                        [*args, limit, offset]).fetchall()
    return rows, int(total)


def revoke_join_token(conn: sqlite3.Connection, token_id: str, at: float) -> None:
    conn.execute("UPDATE join_tokens SET revoked_at = ? WHERE id = ?", (at, token_id))


def count_join_token_use(conn: sqlite3.Connection, token_id: str) -> None:
    conn.execute("UPDATE join_tokens SET uses = uses + 1 WHERE id = ?", (token_id,))


# --- actions -------------------------------------------------------------------------------------------------

# An action with its artifact as NAME@VERSION (artifact_ref), as admins see it.
_ADMIN_SELECT = ("SELECT ac.*, ar.name || '@' || ar.version AS artifact_ref FROM actions ac "
                 "LEFT JOIN artifacts ar ON ar.id = ac.artifact_id")
_INSERT_EVENT = "INSERT INTO action_events (action_id, ts, state, message, progress) VALUES (?, ?, ?, ?, ?)"


def action(conn: sqlite3.Connection, action_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM actions WHERE id = ?", (action_id,)).fetchone()


def admin_action(conn: sqlite3.Connection, action_id: str) -> sqlite3.Row | None:
    """The action with its artifact_ref (NAME@VERSION)."""
    return conn.execute(f"{_ADMIN_SELECT} WHERE ac.id = ?", (action_id,)).fetchone()


def admin_actions_of(conn: sqlite3.Connection, device_id: str, limit: int) -> list[sqlite3.Row]:
    """A device's actions with their artifact_ref, newest first."""
    tie = dialect_of(conn).insertion_order("id", "ac.")
    return conn.execute(f"{_ADMIN_SELECT} WHERE ac.device_id = ? ORDER BY ac.created_at DESC, {tie} DESC "
                        "LIMIT ?", (device_id, limit)).fetchall()


@functools.cache
def _open_actions(d: Dialect) -> str:
    return f"SELECT * FROM actions WHERE device_id = ? AND open = 1 ORDER BY created_at, {d.insertion_order('id')}"


def open_actions(conn: sqlite3.Connection, device_id: str) -> list[sqlite3.Row]:
    """A device's open actions, oldest first."""
    return conn.execute(_open_actions(dialect_of(conn)), (device_id,)).fetchall()


def devices_with_open_actions(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT device_id FROM actions WHERE open = 1")}


def devices_still_open(conn: sqlite3.Connection, device_ids: list[str]) -> set[str]:
    """Of ``device_ids``, those that have an open action."""
    found: set[str] = set()
    for i in range(0, len(device_ids), CHUNK):
        chunk = device_ids[i:i + CHUNK]
        found.update(r[0] for r in conn.execute(
            f"SELECT DISTINCT device_id FROM actions WHERE open = 1 AND device_id IN ({_marks(len(chunk))})", chunk))
    return found


def open_actions_on(conn: sqlite3.Connection, component: str, device_ids: list[str]) -> list[sqlite3.Row]:
    """device_id, id and kind of the open actions for ``component`` on these devices."""
    return conn.execute(f"SELECT device_id, id, kind FROM actions WHERE open = 1 AND component = ? "
                        f"AND device_id IN ({_marks(len(device_ids))})", [component, *device_ids]).fetchall()


def insert_action(conn: sqlite3.Connection, *, action_id: str, device_id: str, kind: str, component: str,
                  artifact_id: str | None, state: str, params: str, rollout_id: str | None,
                  created_by: str | None, at: float) -> None:
    """A new action (``params`` JSON text) and the first event of its history."""
    conn.execute("INSERT INTO actions (id, device_id, kind, component, artifact_id, state, params, rollout_id, "
                 "created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (action_id, device_id, kind, component, artifact_id, state, params, rollout_id, created_by, at, at))
    insert_action_event(conn, action_id, at, state)


@functools.cache
def _insert_actions(d: Dialect) -> tuple[str, str]:
    ids, devices = d.json_member("a.value", "id", "text"), d.json_member("a.value", "device_id", "text")
    return (f"INSERT INTO actions (id, device_id, kind, component, artifact_id, state, params, rollout_id, "
            f"created_by, created_at, updated_at) SELECT {ids}, {devices}, ?, ?, ?, ?, ?, ?, ?, ?, ? "
            f"FROM {d.json_array_elements('a')}",
            f"INSERT INTO action_events (action_id, ts, state, message, progress) SELECT {ids}, ?, ?, '', 0 "
            f"FROM {d.json_array_elements('a')}")


def insert_actions(conn: sqlite3.Connection, action_ids: list[str], device_ids: list[str], *, kind: str,
                   component: str, artifact_id: str | None, state: str, params: str, rollout_id: str | None,
                   created_by: str | None, at: float) -> None:
    """Many new actions alike but for their ids and devices (``params`` JSON text), and the first event of each:
    two statements however many, each unpacking one JSON list in the database. One statement, not one per row:
    inside a transaction SQLite keeps a statement journal of every page a statement with triggers changes, so
    a statement per row would copy the pages of the table, its indexes and the triggers' tables once per row
    (docs/performance.md, "Orchestrator: the stage start")."""
    if not action_ids:
        return
    rows = json.dumps([{"id": a, "device_id": d} for a, d in zip(action_ids, device_ids, strict=True)])
    actions, events = _insert_actions(dialect_of(conn))
    conn.execute(actions, (kind, component, artifact_id, state, params, rollout_id, created_by, at, at, rows))
    conn.execute(events, (at, state, rows))


def insert_action_event(conn: sqlite3.Connection, action_id: str, at: float, state: str, message: str = "",
                        progress: int = 0) -> None:
    """One entry of an action's history."""
    conn.execute(_INSERT_EVENT, (action_id, at, state, message, progress))


def set_action_state(conn: sqlite3.Connection, action_id: str, state: str, message: str, progress: int,
                     at: float, *, terminal: bool) -> None:
    """A new state (closed and finished at ``at`` when ``terminal``) and its history entry."""
    conn.execute("UPDATE actions SET state = ?, message = ?, progress = ?, updated_at = ?, open = ?, "
                 "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                 (state, message, progress, at, 0 if terminal else 1, terminal, at, action_id))
    insert_action_event(conn, action_id, at, state, message, progress)


def set_action_progress(conn: sqlite3.Connection, action_id: str, message: str, progress: int, at: float) -> None:
    conn.execute("UPDATE actions SET message = ?, progress = ?, updated_at = ? WHERE id = ?",
                 (message, progress, at, action_id))


def cancel_open_actions(conn: sqlite3.Connection, device_id: str, message: str, at: float) -> None:
    """Every open action of the device ends as cancelled (no history entry: the device is revoked)."""
    conn.execute("UPDATE actions SET state = 'cancelled', open = 0, finished_at = ?, updated_at = ?, "
                 "message = ? WHERE device_id = ? AND open = 1", (at, at, message, device_id))


def action_device_id(conn: sqlite3.Connection, action_id: str) -> str | None:
    r = conn.execute("SELECT device_id FROM actions WHERE id = ?", (action_id,)).fetchone()
    return None if r is None else str(r[0])


def open_action_fetches(conn: sqlite3.Connection, device_id: str, sha256: str) -> bool:
    """One of the device's open actions refers to the artifact with this content."""
    return conn.execute("SELECT 1 FROM actions ac JOIN artifacts ar ON ar.id = ac.artifact_id "
                        "WHERE ac.device_id = ? AND ac.open = 1 AND ar.sha256 = ? LIMIT 1",
                        (device_id, sha256)).fetchone() is not None


def artifact_id_of(conn: sqlite3.Connection, name: str, version: str) -> str | None:
    """The id of artifact NAME@VERSION, if it exists (what a rollback installs)."""
    r = conn.execute("SELECT id FROM artifacts WHERE name = ? AND version = ?", (name, version)).fetchone()
    return None if r is None else str(r[0])


def action_result(conn: sqlite3.Connection, action_id: str) -> str | None:
    """The JSON result an action's device sent back (the lines of a logs action), if any."""
    r = conn.execute("SELECT result FROM action_results WHERE action_id = ?", (action_id,)).fetchone()
    return None if r is None else str(r[0])


def keep_action_result(conn: sqlite3.Connection, device_id: str, action_id: str, result: str, at: float,
                       keep: int) -> None:
    """Store an action's result; the device keeps its ``keep`` newest."""
    conn.execute("INSERT INTO action_results (action_id, device_id, result, created_at) VALUES (?,?,?,?)",
                 (action_id, device_id, result, at))
    conn.execute("DELETE FROM action_results WHERE device_id = ? AND action_id NOT IN (SELECT action_id FROM "
                 f"action_results WHERE device_id = ? ORDER BY created_at DESC, "
                 f"{dialect_of(conn).insertion_order('action_id')} DESC LIMIT ?)",
                 (device_id, device_id, keep))


def device_count_by_status(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT status, COUNT(*) FROM devices GROUP BY status")]


def open_action_count_by_kind_and_state(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT kind, state, COUNT(*) FROM actions WHERE open = 1 GROUP BY kind, state")]


def longest_poll_interval(conn: sqlite3.Connection, action_ids: list[str]) -> int:
    """The longest poll interval among the devices of these actions (at most 500), 0 for none."""
    row = conn.execute("SELECT MAX(d.poll_interval) FROM actions a JOIN devices d ON d.id = a.device_id "
                       f"WHERE a.id IN ({_marks(len(action_ids))})", action_ids).fetchone()
    return int(row[0] or 0)


def devices_with_id_starting(conn: sqlite3.Connection, start: str, limit: int) -> list[sqlite3.Row]:
    """(id, name) of the devices whose id starts with ``start`` (not empty), by id: a range scan of the key."""
    end = start[:-1] + chr(ord(start[-1]) + 1)
    return conn.execute("SELECT id, name FROM devices WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                        (start, end, limit)).fetchall()


# --- challenges used, for replicas on one PostgreSQL database (devices/challenges.py) -------------------------------

def use_challenge(conn: sqlite3.Connection, nonce: str, expires_at: float) -> bool:
    """Record a challenge's use; False if it was used before."""
    return conn.execute("INSERT INTO used_challenges (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING",
                        (nonce, expires_at)).rowcount == 1


def forget_used_challenges(conn: sqlite3.Connection, at: float) -> None:
    """Drop the uses of challenges expired before ``at``: they are refused for their expiry anyway."""
    conn.execute("DELETE FROM used_challenges WHERE expires_at < ?", (at,))


# --- device certificates and manufacturer CAs (certificate_service.py, factory.py) ----------------------------

def insert_certificate(conn: sqlite3.Connection, *, serial: str, device_id: str, key_sha256: str, not_before: float,
                       not_after: float) -> None:
    conn.execute("INSERT INTO device_certificates (serial, device_id, key_sha256, not_before, not_after) "
                 "VALUES (?, ?, ?, ?, ?)", (serial, device_id, key_sha256, not_before, not_after))


def certificates_of(conn: sqlite3.Connection, device_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM device_certificates WHERE device_id = ? ORDER BY not_before DESC, serial",
                        (device_id,)).fetchall()


def certificate_expiry(conn: sqlite3.Connection, device_ids: list[str], at: float) -> dict[str, float]:
    """Each device's latest expiry among its certificates that are neither expired nor revoked."""
    out: dict[str, float] = {}
    for i in range(0, len(device_ids), CHUNK):
        chunk = device_ids[i:i + CHUNK]
        out.update((r[0], float(r[1])) for r in conn.execute(
            f"SELECT device_id, MAX(not_after) FROM device_certificates WHERE device_id IN ({_marks(len(chunk))}) "
            "AND revoked_at IS NULL AND not_after > ? GROUP BY device_id", [*chunk, at]))
    return out


def live_certificate_count(conn: sqlite3.Connection, device_id: str, at: float) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM device_certificates WHERE device_id = ? AND revoked_at IS NULL "
                            "AND not_after > ?", (device_id, at)).fetchone()[0])


def certificate(conn: sqlite3.Connection, serial: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM device_certificates WHERE serial = ?", (serial,)).fetchone()


def revoke_certificates_of(conn: sqlite3.Connection, device_id: str, at: float) -> int:
    """Revoke every certificate of the device not revoked yet; how many."""
    return conn.execute("UPDATE device_certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                        (at, device_id)).rowcount


def revoked_certificates(conn: sqlite3.Connection, unexpired_at: float) -> list[tuple[str, float]]:
    """(serial, revoked_at) of the revoked certificates that have not expired by ``unexpired_at``: a CRL's list."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT serial, revoked_at FROM device_certificates WHERE revoked_at IS NOT NULL AND not_after > ? "
        "ORDER BY serial", (unexpired_at,))]


def shut_out_devices(conn: sqlite3.Connection, unexpired_at: float) -> list[str]:
    """Revoked or deleted devices that hold a revoked certificate not expired by ``unexpired_at``: those a broker
    must keep out (a re-keyed device's old certificates are revoked too, but the device is active: not listed)."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT c.device_id FROM device_certificates c LEFT JOIN devices d ON d.id = c.device_id "
        "WHERE c.revoked_at IS NOT NULL AND c.not_after > ? AND (d.id IS NULL OR d.status = 'revoked') "
        "ORDER BY c.device_id", (unexpired_at,))]


def revocation_mark(conn: sqlite3.Connection) -> tuple[int, float]:
    """How many certificates are revoked and the latest revocation: what changes whenever the CRL must."""
    r = conn.execute("SELECT COUNT(*), MAX(revoked_at) FROM device_certificates WHERE revoked_at IS NOT NULL"
                     ).fetchone()
    return int(r[0]), float(r[1] or 0)


def insert_manufacturer_ca(conn: sqlite3.Connection, *, ca_id: str, fingerprint: str, subject: str, pem: str,
                           tags: str, auto_activate: bool, created_at: float) -> None:
    conn.execute("INSERT INTO manufacturer_cas (id, fingerprint, subject, pem, tags, auto_activate, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (ca_id, fingerprint, subject, pem, tags, int(auto_activate),
                                                  created_at))


def manufacturer_cas(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM manufacturer_cas ORDER BY created_at, id").fetchall()


def manufacturer_ca(conn: sqlite3.Connection, ref: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM manufacturer_cas WHERE id = ? OR fingerprint = ?", (ref, ref)).fetchone()


def delete_manufacturer_ca(conn: sqlite3.Connection, ca_id: str) -> None:
    conn.execute("DELETE FROM manufacturer_cas WHERE id = ?", (ca_id,))
