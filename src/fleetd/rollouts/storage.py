"""The rollouts' queries (docs/architecture.md, "Where SQL lives"): rollouts, their stages and faults, the devices
a target selects, and the bulk reads of the orchestrator's snapshot.

The snapshot reads run on every orchestrator pass over up to 100,000 devices: their SQL is module-level constants
and they return plain tuples (cheaper than ``sqlite3.Row`` by far at that count).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.names import DEVICE_TYPE_PATTERN, TAG_KEY
from ..store.dialect import dialect_of

if TYPE_CHECKING:
    from .progress import Target


def _tuples(conn: sqlite3.Connection, sql: str, args: Any = ()) -> list[Any]:
    cur = conn.cursor()
    cur.row_factory = None  # plain tuples: much cheaper than sqlite3.Row for 100,000 rows
    return cur.execute(sql, args).fetchall()


def _marks(n: int) -> str:
    """The placeholders of an IN list of ``n``; none: ``NULL``, which matches nothing (PostgreSQL has no ``IN ()``)."""
    return ",".join("?" * n) or "NULL"


# --- the devices a target selects ---------------------------------------------------------------------------------

def _target_where(conn: sqlite3.Connection, t: Target) -> tuple[str, list[Any]]:
    """SQL over ``devices`` matching the target's active devices, and its parameters."""
    d = dialect_of(conn)
    parts: list[str] = []
    args: list[Any] = []
    if t.device_types:
        # Any of the types, names or patterns (DEVICE_TYPE_PATTERN refuses what is neither).
        where = ["(" + " OR ".join([d.star_match("device_type", "?")] * len(t.device_types)) + ")"]
        args += [DEVICE_TYPE_PATTERN.check(p) for p in t.device_types]
        for k, v in sorted(t.tags.items()):
            where.append(d.json_key_equals("tags"))
            args += [TAG_KEY.check(k), v]
        parts.append("(" + " AND ".join(where) + ")")
    if t.device_ids:
        parts.append(d.in_json_list("id"))
        args.append(json.dumps(t.device_ids))
    return f"(status = 'active' AND ({' OR '.join(parts) or '0'}))", args


def count_target_devices(conn: sqlite3.Connection, target: Target) -> int:
    """How many active devices the target selects."""
    where, args = _target_where(conn, target)
    return int(conn.execute(f"SELECT COUNT(*) FROM devices WHERE {where}", args).fetchone()[0])


def target_device_inventories(conn: sqlite3.Connection, target: Target) -> list[tuple[str, str]]:
    """(id, inventory JSON) of the active devices the target selects."""
    where, args = _target_where(conn, target)
    return [(r[0], r[1]) for r in conn.execute(f"SELECT id, inventory FROM devices WHERE {where}", args)]


def count_devices_in_both(conn: sqlite3.Connection, a: Target, b: Target) -> int:
    """How many active devices both targets select."""
    where_a, args_a = _target_where(conn, a)
    where_b, args_b = _target_where(conn, b)
    return int(conn.execute(f"SELECT COUNT(*) FROM devices WHERE {where_a} AND {where_b}",
                            [*args_a, *args_b]).fetchone()[0])


def target_devices(conn: sqlite3.Connection, target: Target) -> list[tuple[str, float | None, float]]:
    """(id, last_seen, when it joined) of the active devices the target selects."""
    where, args = _target_where(conn, target)
    return _tuples(conn, f"SELECT id, last_seen, COALESCE(enrolled_at, created_at) FROM devices WHERE {where}", args)


def devices_by_id(conn: sqlite3.Connection, device_ids: list[str]) -> list[tuple[str, float | None, float]]:
    """(id, last_seen, when it joined) of these devices (at most 500 ids), whatever their status."""
    return _tuples(conn, "SELECT id, last_seen, COALESCE(enrolled_at, created_at) FROM devices WHERE id IN "
                         f"({_marks(len(device_ids))})", device_ids)


def active_types_among(conn: sqlite3.Connection, device_ids: list[str]) -> dict[str, str]:
    """Device → its type, for those of these devices (at most 500) that are active.

    The status is compared here, not in SQL: given ``status = ?`` the planner would walk the status index (every
    active device) instead of looking up 500 ids, and a stage start makes this query once per 500 devices."""
    return {row[0]: row[2] for row in _tuples(
        conn, f"SELECT id, status, device_type FROM devices WHERE id IN ({_marks(len(device_ids))})", device_ids)
        if row[1] == "active"}


def inventories_among(conn: sqlite3.Connection, device_ids: list[str]) -> dict[str, str]:
    """Device → its inventory (JSON text), for these devices (at most 500)."""
    return {row[0]: row[1] for row in _tuples(
        conn, f"SELECT id, inventory FROM devices WHERE id IN ({_marks(len(device_ids))})", device_ids)}


def devices_with_action(conn: sqlite3.Connection, device_ids: list[str], component: str, rollout_id: str,
                        kind: str) -> set[str]:
    """Those of these devices (at most 500) with an open action for the component, or a ``kind`` action of the
    rollout."""
    return {row[0] for row in conn.execute(
        f"SELECT device_id FROM actions WHERE device_id IN ({_marks(len(device_ids))}) AND ((open = 1 AND "
        f"component = ?) OR (rollout_id = ? AND kind = ?))", [*device_ids, component, rollout_id, kind])}


# --- rollouts -----------------------------------------------------------------------------------------------------

def insert_rollout(conn: sqlite3.Connection, *, rollout_id: str, artifact_id: str, component: str, target: str,
                   stages: str, max_failure: float, soak: float, offline_timeout: float, start_at: float | None,
                   window: str, health: str, consent: bool, created_by: str | None, now: float) -> None:
    """A scheduled rollout; ``target`` and ``stages`` as JSON text, ``max_failure`` a fraction."""
    conn.execute(
        "INSERT INTO rollouts (id, artifact_id, component, target, stages, max_failure, soak_seconds, "
        "offline_timeout, start_at, \"window\", health, consent, state, created_by, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'scheduled',?,?,?)",
        (rollout_id, artifact_id, component, target, stages, max_failure, soak, offline_timeout, start_at, window,
         health, int(consent), created_by, now, now))


_ROLLOUT = ("SELECT r.*, a.name || '@' || a.version AS label, a.version AS version FROM rollouts r "
            "JOIN artifacts a ON a.id = r.artifact_id WHERE r.id = ?")


def rollout_row(conn: sqlite3.Connection, rollout_id: str) -> sqlite3.Row | None:
    """The rollout with its artifact's NAME@VERSION (``label``) and ``version``."""
    row: sqlite3.Row | None = conn.execute(_ROLLOUT, (rollout_id,)).fetchone()
    return row


def rollout_rev(conn: sqlite3.Connection, rollout_id: str) -> int:
    return int(conn.execute("SELECT rev FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()[0])


def active_rollouts_of(conn: sqlite3.Connection, component: str) -> list[sqlite3.Row]:
    """(id, state, target) of the scheduled, running and paused rollouts of a component, oldest first."""
    return conn.execute("SELECT id, state, target FROM rollouts WHERE component = ? AND state IN "
                        "('scheduled', 'running', 'paused') ORDER BY created_at", (component,)).fetchall()


def newest_rollout_ids(conn: sqlite3.Connection, state: str, limit: int) -> list[str]:
    """The ids of the newest rollouts (in ``state`` when given), newest first."""
    if state:
        rows = conn.execute("SELECT id FROM rollouts WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit))
    else:
        rows = conn.execute("SELECT id FROM rollouts ORDER BY created_at DESC LIMIT ?", (limit,))
    return [r[0] for r in rows]


_DUE = ("SELECT id FROM rollouts r WHERE state IN ('scheduled', 'running', 'paused') "
        "OR (state = 'rolled_back' AND finished_at >= ? - offline_timeout AND NOT EXISTS ("
        "    SELECT 1 FROM rollouts n WHERE n.component = r.component AND n.created_at > r.finished_at)) "
        "ORDER BY created_at")


def due_rollout_ids(conn: sqlite3.Connection, now: float) -> list[str]:
    """The active rollouts, and the rolled back ones within their offline timeout that no newer rollout of the
    component took over from, oldest first."""
    return [r[0] for r in conn.execute(_DUE, (now,))]


_SET_STATE = ("UPDATE rollouts SET state = ?, reason = COALESCE(?, reason), rev = rev + 1, updated_at = ?, "
              "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?")


def set_rollout_state(conn: sqlite3.Connection, rollout_id: str, state: str, reason: str | None, now: float,
                      ended: bool) -> None:
    """Change the state (and the reason, unless None), bump ``rev``; ``ended`` sets ``finished_at``."""
    conn.execute(_SET_STATE, (state, reason, now, ended, now, rollout_id))


_RUN_STAGE = ("UPDATE rollouts SET stage = ?, state = 'running', rev = rev + 1, updated_at = ?, "
              "started_at = COALESCE(started_at, ?) WHERE id = ?")


def set_running_stage(conn: sqlite3.Connection, rollout_id: str, stage: int, now: float) -> None:
    """The rollout runs stage ``stage`` (started now if it had not started), ``rev`` bumped."""
    conn.execute(_RUN_STAGE, (stage, now, now, rollout_id))


# --- stages and faults --------------------------------------------------------------------------------------------

_END_STAGE = ("UPDATE rollout_stages SET ended_at = ?, outcome = ? WHERE rollout_id = ? AND idx = ? "
              "AND ended_at IS NULL")
# A stage whose row exists starts afresh, as if its row were inserted anew: no column keeps its old value.
_START_STAGE = ("INSERT INTO rollout_stages (rollout_id, idx, started_at) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id, idx) DO UPDATE SET started_at = excluded.started_at, ended_at = NULL, "
                "outcome = ''")


def end_stage(conn: sqlite3.Connection, rollout_id: str, idx: int, outcome: str, now: float) -> None:
    """End the stage, if it has not ended, with ``outcome``."""
    conn.execute(_END_STAGE, (now, outcome, rollout_id, idx))


def start_stage(conn: sqlite3.Connection, rollout_id: str, idx: int, now: float) -> None:
    conn.execute(_START_STAGE, (rollout_id, idx, now))


def stage_rows(conn: sqlite3.Connection, rollout_id: str) -> dict[int, tuple[float, float | None, str]]:
    """Stage index → (started, ended, outcome) of the rollout's started stages."""
    return {i: (s, e, o) for i, s, e, o in _tuples(conn, _STAGES, (rollout_id,))}


def stage_rows_of(conn: sqlite3.Connection, rollout_ids: list[str]
                  ) -> dict[str, dict[int, tuple[float, float | None, str]]]:
    """Per rollout, :func:`stage_rows`."""
    out: dict[str, dict[int, tuple[float, float | None, str]]] = {}
    for rid, idx, started, ended, outcome in conn.execute(
            "SELECT rollout_id, idx, started_at, ended_at, outcome FROM rollout_stages WHERE rollout_id IN "
            f"({_marks(len(rollout_ids))})", rollout_ids):
        out.setdefault(rid, {})[idx] = (started, ended, outcome)
    return out


_INSERT_FAULT = ("INSERT INTO rollout_faults (rollout_id, device_id, reason, at) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (rollout_id, device_id) DO NOTHING")


def insert_faults(conn: sqlite3.Connection, rollout_id: str, faults: Iterable[tuple[str, str]], now: float) -> None:
    """Record (device, reason) faults; a device keeps its first."""
    conn.executemany(_INSERT_FAULT, [(rollout_id, d, why, now) for d, why in faults])


# --- the rollout's actions ----------------------------------------------------------------------------------------

_CANCEL_EVENTS = ("INSERT INTO action_events (action_id, ts, state, message, progress) SELECT id, ?, 'cancelled', "
                  "?, progress FROM actions WHERE rollout_id = ? AND kind = 'install' AND open = 1")
_CANCEL = ("UPDATE actions SET state = 'cancelled', open = 0, message = ?, updated_at = ?, finished_at = ? "
           "WHERE rollout_id = ? AND kind = 'install' AND open = 1 RETURNING device_id")


def cancel_open_installs(conn: sqlite3.Connection, rollout_id: str, now: float, message: str) -> list[str]:
    """Cancel the rollout's install actions that have not ended (one statement each, however many), with their
    history entry. → their devices."""
    conn.execute(_CANCEL_EVENTS, (now, message, rollout_id))
    return [row[0] for row in conn.execute(_CANCEL, (message, now, now, rollout_id))]


# --- the orchestrator's snapshot (plain tuples) -------------------------------------------------------------------

# Covered by the actions_rollout index: no table lookups.
_INSTALLS = "SELECT device_id, state, updated_at, finished_at FROM actions WHERE rollout_id = ? AND kind = 'install'"
_ROLLBACKS = "SELECT device_id, state FROM actions WHERE rollout_id = ? AND kind = 'rollback'"
_FAILED_MESSAGES = ("SELECT device_id, message FROM actions WHERE rollout_id = ? AND kind = 'install' "
                    "AND state IN ('failed', 'rolled_back', 'cancelled')")
_COMPONENTS = "SELECT device_id, version, state, health, restarts FROM device_components WHERE name = ?"
_FAULTS = "SELECT device_id, reason FROM rollout_faults WHERE rollout_id = ?"
_BUSY = ("SELECT device_id FROM actions WHERE open = 1 AND component = ? "
         "AND (rollout_id IS NULL OR rollout_id != ? OR kind != 'install')")
_STAGES = "SELECT idx, started_at, ended_at, outcome FROM rollout_stages WHERE rollout_id = ?"


def install_actions(conn: sqlite3.Connection, rollout_id: str) -> list[tuple[str, str, float, float | None]]:
    """(device, state, updated_at, finished_at) of the rollout's install actions."""
    return _tuples(conn, _INSTALLS, (rollout_id,))


def rollback_states(conn: sqlite3.Connection, rollout_id: str) -> dict[str, str]:
    """Device → the state of its rollback action of the rollout."""
    return dict(_tuples(conn, _ROLLBACKS, (rollout_id,)))


def failed_install_messages(conn: sqlite3.Connection, rollout_id: str) -> dict[str, str]:
    """Device → the message of its install action, for the ones that failed, rolled back or were cancelled."""
    return dict(_tuples(conn, _FAILED_MESSAGES, (rollout_id,)))


def component_reports(conn: sqlite3.Connection, component: str) -> list[tuple[str, str, str, str, int]]:
    """(device, version, state, health, restarts) of the component on every device that reports it."""
    return _tuples(conn, _COMPONENTS, (component,))


def faults(conn: sqlite3.Connection, rollout_id: str) -> dict[str, str]:
    """Device → the fault recorded against it in the rollout."""
    return dict(_tuples(conn, _FAULTS, (rollout_id,)))


def busy_devices(conn: sqlite3.Connection, component: str, rollout_id: str) -> set[str]:
    """Devices with an open action for the component other than this rollout's install."""
    return {row[0] for row in _tuples(conn, _BUSY, (component, rollout_id))}


def device_names(conn: sqlite3.Connection, device_ids: list[str]) -> dict[str, str]:
    """The names of ``device_ids`` (one query, whatever their number); a deleted device is left out."""
    return dict(_tuples(conn, f"SELECT id, name FROM devices WHERE {dialect_of(conn).in_json_list('id')}",
                        [json.dumps(device_ids)]))


# --- the orchestrator's incremental reads (docs/performance.md, "The orchestrator") -------------------------------

_LAST_CHANGE = "SELECT COALESCE(MAX(seq), 0) FROM device_changes"
_CHANGES = "SELECT seq, device_id FROM device_changes WHERE seq > ?"
_FORGET_CHANGES = "DELETE FROM device_changes WHERE seq <= ?"


def last_change(conn: sqlite3.Connection) -> int:
    """The sequence number of the newest entry of the device change log (0: none yet)."""
    return int(conn.execute(_LAST_CHANGE).fetchone()[0])


def changes_since(conn: sqlite3.Connection, seq: int) -> tuple[int, set[str]]:
    """(the newest sequence number, the devices changed after ``seq``) from the device change log."""
    rows = _tuples(conn, _CHANGES, (seq,))
    return max((r[0] for r in rows), default=seq), {r[1] for r in rows}


def forget_changes(conn: sqlite3.Connection, seq: int) -> int:
    """Drop the change log's entries up to ``seq`` (no tracker needs them). → how many."""
    return int(conn.execute(_FORGET_CHANGES, (seq,)).rowcount)


def devices_in_target(conn: sqlite3.Connection, target: Target, device_ids: list[str]
                      ) -> list[tuple[str, float | None, float, int]]:
    """(id, last_seen, when it joined, whether the target selects it) of these devices (at most 500) that exist."""
    where, args = _target_where(conn, target)
    return _tuples(conn, f"SELECT id, last_seen, COALESCE(enrolled_at, created_at), {where} FROM devices "
                         f"WHERE id IN ({_marks(len(device_ids))})", [*args, *device_ids])


def rollout_actions_of(conn: sqlite3.Connection, rollout_id: str, device_ids: list[str]
                       ) -> list[tuple[str, str, str, float, float | None, str]]:
    """(device, kind, state, updated_at, finished_at, message) of the rollout's install and rollback actions on
    these devices (at most 500)."""
    return _tuples(conn, "SELECT device_id, kind, state, updated_at, finished_at, message FROM actions WHERE "
                         f"rollout_id = ? AND device_id IN ({_marks(len(device_ids))}) AND kind IN "
                         "('install', 'rollback')", [rollout_id, *device_ids])


def component_reports_of(conn: sqlite3.Connection, component: str, device_ids: list[str]
                         ) -> list[tuple[str, str, str, str, int]]:
    """:func:`component_reports` of these devices (at most 500)."""
    return _tuples(conn, "SELECT device_id, version, state, health, restarts FROM device_components WHERE name = ? "
                         f"AND device_id IN ({_marks(len(device_ids))})", [component, *device_ids])


def faults_of(conn: sqlite3.Connection, rollout_id: str, device_ids: list[str]) -> dict[str, str]:
    """:func:`faults` of these devices (at most 500)."""
    return dict(_tuples(conn, "SELECT device_id, reason FROM rollout_faults WHERE rollout_id = ? AND device_id IN "
                              f"({_marks(len(device_ids))})", [rollout_id, *device_ids]))


def busy_among(conn: sqlite3.Connection, component: str, rollout_id: str, device_ids: list[str]) -> set[str]:
    """:func:`busy_devices` among these devices (at most 500)."""
    return {row[0] for row in _tuples(
        conn, f"SELECT device_id FROM actions WHERE device_id IN ({_marks(len(device_ids))}) AND open = 1 AND "
              "component = ? AND (rollout_id IS NULL OR rollout_id != ? OR kind != 'install')",
        [*device_ids, component, rollout_id])}
