"""The alerts' queries (docs/architecture.md, "Where SQL lives"): rules, incidents, the devices a rule targets,
webhooks and their delivery log."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from ..core.names import TAG_KEY
from ..store.dialect import dialect_of
from ..store.where import Where

# --- rules -------------------------------------------------------------------------------------------------------


def insert_rule(conn: sqlite3.Connection, *, rule_id: str, name: str, kind: str, metric: str, aggregate: str,
                comparison: str, threshold: float, window_seconds: int, tags: str, device_type: str, enabled: bool,
                created_by: str | None, now: float) -> None:
    """``tags``: the JSON object."""
    conn.execute("INSERT INTO alert_rules (id, name, kind, metric, aggregate, comparison, threshold, window_seconds, "
                 "tags, device_type, enabled, created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (rule_id, name, kind, metric, aggregate, comparison, threshold, window_seconds, tags, device_type,
                  int(enabled), created_by, now, now))


def rule_row(conn: sqlite3.Connection, rule_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM alert_rules WHERE id = ?", (rule_id,)).fetchone()
    return row


def rule_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every rule, oldest first."""
    return conn.execute("SELECT * FROM alert_rules ORDER BY created_at, id").fetchall()


def update_rule(conn: sqlite3.Connection, rule_id: str, *, name: str, aggregate: str, comparison: str,
                threshold: float, window_seconds: int, enabled: bool, now: float) -> None:
    conn.execute("UPDATE alert_rules SET name = ?, aggregate = ?, comparison = ?, threshold = ?, "
                 "window_seconds = ?, enabled = ?, updated_at = ? WHERE id = ?",
                 (name, aggregate, comparison, threshold, window_seconds, int(enabled), now, rule_id))


def delete_rule(conn: sqlite3.Connection, rule_id: str) -> None:
    conn.execute("DELETE FROM alert_rules WHERE id = ?", (rule_id,))


def active_devices_since(conn: sqlite3.Connection, tags: dict[str, str], device_type: str,
                         device_ids: str | None) -> dict[str, float]:
    """Active devices with all ``tags`` (and of ``device_type`` when given; among ``device_ids``, a JSON list,
    when given) → when they became active."""
    d = dialect_of(conn)
    sql = "SELECT id, COALESCE(enrolled_at, created_at) FROM devices WHERE status = 'active'"
    args: list[Any] = []
    if device_type:
        sql += " AND device_type = ?"
        args.append(device_type)
    for k, v in tags.items():
        sql += f" AND {d.json_key_equals('tags')}"
        args += [TAG_KEY.check(k), v]
    if device_ids is not None:
        sql += f" AND {d.in_json_list('id')}"
        args.append(device_ids)
    return {r[0]: float(r[1] or 0) for r in conn.execute(sql, args)}


# --- incidents ---------------------------------------------------------------------------------------------------

_INCIDENT_SELECT = ("SELECT i.*, COALESCE(d.name, '') AS device_name FROM alert_incidents i "
                    "LEFT JOIN devices d ON d.id = i.device_id")


def incident_row(conn: sqlite3.Connection, incident_id: str) -> sqlite3.Row:
    """The incident with its device's name (empty once the device is gone)."""
    row: sqlite3.Row = conn.execute(f"{_INCIDENT_SELECT} WHERE i.id = ?", (incident_id,)).fetchone()
    return row


def incident_rows(conn: sqlite3.Connection, *, state: str, rule_id: str, device_id: str, limit: int
                  ) -> list[sqlite3.Row]:
    """Incidents (empty filters match all), newest first, each with its device's name."""
    w = Where()
    w.equal("i.state", state)
    w.equal("i.rule_id", rule_id)
    w.equal("i.device_id", device_id)
    return conn.execute(f"{_INCIDENT_SELECT}{w.sql} ORDER BY i.started_at DESC, i.id LIMIT ?",
                        (*w.args, limit)).fetchall()


def delete_resolved_incidents(conn: sqlite3.Connection, before: float) -> int:
    """Forget incidents resolved before ``before``. → how many."""
    return int(conn.execute("DELETE FROM alert_incidents WHERE state = 'resolved' AND resolved_at < ?",
                            (before,)).rowcount)


def firing_incidents(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
    """(rule, device) → id of its open incident."""
    return {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT rule_id, device_id, id FROM alert_incidents WHERE state = 'firing'")}


def firing_devices(conn: sqlite3.Connection, rule_id: str) -> list[str]:
    """Devices with an open incident of the rule."""
    return [r[0] for r in conn.execute(
        "SELECT device_id FROM alert_incidents WHERE rule_id = ? AND state = 'firing'", (rule_id,))]


def firing_incident_id(conn: sqlite3.Connection, rule_id: str, device_id: str) -> str | None:
    r = conn.execute("SELECT id FROM alert_incidents WHERE rule_id = ? AND device_id = ? AND state = 'firing'",
                     (rule_id, device_id)).fetchone()
    return None if r is None else str(r[0])


def insert_firing_incident(conn: sqlite3.Connection, *, incident_id: str, rule_id: str, rule_name: str, metric: str,
                           device_id: str, value: float | None, message: str, now: float) -> bool:
    """Open an incident; False (nothing written) when the (rule, device) has one open already: the unique index
    on open incidents is what deduplicates."""
    return conn.execute(
        "INSERT INTO alert_incidents (id, rule_id, rule_name, metric, device_id, state, value, message, started_at) "
        "VALUES (?,?,?,?,?, 'firing', ?,?,?) ON CONFLICT (rule_id, device_id) WHERE state = 'firing' DO NOTHING",
        (incident_id, rule_id, rule_name, metric, device_id, value, message, now)).rowcount == 1


def resolve_incident(conn: sqlite3.Connection, incident_id: str, *, last_value: float | None, resolution: str,
                     message: str, now: float) -> None:
    conn.execute("UPDATE alert_incidents SET state = 'resolved', resolved_at = ?, last_value = ?, "
                 "resolution = ?, message = ? WHERE id = ?", (now, last_value, resolution, message, incident_id))


def firing_incident_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM alert_incidents WHERE state = 'firing'").fetchone()[0])


# --- webhooks ----------------------------------------------------------------------------------------------------


def insert_webhook(conn: sqlite3.Connection, *, webhook_id: str, name: str, url: str, secret: str, events: str,
                   created_by: str | None, now: float) -> None:
    """An enabled webhook; ``events``: the JSON list."""
    conn.execute("INSERT INTO webhooks (id, name, url, secret, events, enabled, created_by, created_at) "
                 "VALUES (?,?,?,?,?,1,?,?)", (webhook_id, name, url, secret, events, created_by, now))


def webhook_row(conn: sqlite3.Connection, webhook_id: str) -> sqlite3.Row:
    row: sqlite3.Row = conn.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
    return row


def webhook_rows(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every webhook, oldest first."""
    return conn.execute("SELECT * FROM webhooks ORDER BY created_at, id").fetchall()


def delete_webhook(conn: sqlite3.Connection, webhook_id: str) -> bool:
    """False when there is no such webhook."""
    return conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount != 0


def enabled_webhook_events(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(id, the JSON list of its events) of every enabled webhook."""
    return [(r[0], r[1]) for r in conn.execute("SELECT id, events FROM webhooks WHERE enabled = 1")]


def insert_deliveries(conn: sqlite3.Connection, webhook_ids: Iterable[str], *, event: str, incident_id: str | None,
                      body: bytes, now: float) -> None:
    """A pending delivery of ``body`` to each webhook, due now."""
    conn.executemany("INSERT INTO webhook_deliveries (webhook_id, event, incident_id, body, state, "
                     "next_attempt_at, created_at) VALUES (?,?,?,?, 'pending', ?, ?)",
                     [(w, event, incident_id, body, now, now) for w in webhook_ids])


def delivery_rows(conn: sqlite3.Connection, *, webhook_id: str, state: str, limit: int) -> list[sqlite3.Row]:
    """Deliveries (empty filters match all), newest first."""
    w = Where()
    w.equal("webhook_id", webhook_id)
    w.equal("state", state)
    return conn.execute(f"SELECT * FROM webhook_deliveries{w.sql} ORDER BY id DESC LIMIT ?",
                        (*w.args, limit)).fetchall()


def delete_finished_deliveries(conn: sqlite3.Connection, before: float) -> int:
    """Forget deliveries that finished before ``before``. → how many."""
    return int(conn.execute("DELETE FROM webhook_deliveries WHERE state != 'pending' AND finished_at < ?",
                            (before,)).rowcount)


def due_heads(conn: sqlite3.Connection, now: float) -> list[sqlite3.Row]:
    """Each enabled webhook's oldest pending delivery, if it is due: (id, webhook_id, event, body, attempts, url,
    secret)."""
    return conn.execute(
        "SELECT d.id, d.webhook_id, d.event, d.body, d.attempts, w.url, w.secret FROM webhook_deliveries d "
        "JOIN webhooks w ON w.id = d.webhook_id AND w.enabled = 1 "
        "WHERE d.id IN (SELECT MIN(id) FROM webhook_deliveries WHERE state = 'pending' GROUP BY webhook_id) "
        "AND d.next_attempt_at <= ?", (now,)).fetchall()


def next_due(conn: sqlite3.Connection) -> float | None:
    """When the first pending delivery of an enabled webhook is due."""
    r = conn.execute("SELECT MIN(next_attempt_at) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
                     "AND w.enabled = 1 WHERE d.state = 'pending'").fetchone()
    return None if r[0] is None else float(r[0])


def delivery_succeeded(conn: sqlite3.Connection, delivery_id: int, *, attempts: int, status: int | None,
                       now: float) -> None:
    conn.execute("UPDATE webhook_deliveries SET state = 'delivered', attempts = ?, last_status = ?, "
                 "last_error = '', finished_at = ? WHERE id = ?", (attempts, status, now, delivery_id))


def delivery_failed(conn: sqlite3.Connection, delivery_id: int, *, attempts: int, status: int | None, error: str,
                    now: float) -> None:
    """The last attempt failed: the delivery is given up."""
    conn.execute("UPDATE webhook_deliveries SET state = 'failed', attempts = ?, last_status = ?, "
                 "last_error = ?, finished_at = ? WHERE id = ?", (attempts, status, error, now, delivery_id))


def delivery_retry_at(conn: sqlite3.Connection, delivery_id: int, *, attempts: int, status: int | None, error: str,
                      at: float) -> None:
    """An attempt failed: try again at ``at``."""
    conn.execute("UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, "
                 "next_attempt_at = ? WHERE id = ?", (attempts, status, error, at, delivery_id))


def deliveries_by_state(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """(state, how many deliveries) for each state in the log."""
    return [(r[0], r[1]) for r in conn.execute("SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state")]
