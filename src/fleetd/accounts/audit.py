"""The audit log: who did what, when, from where, and how it ended."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from ..core.clock import now, to_dt
from ..core.names import like_pattern


@dataclass(frozen=True)
class Actor:
    """Who did something. ``kind`` is user, key, device, system or anonymous."""

    kind: str
    id: str | None = None
    name: str | None = None
    remote_addr: str | None = None


SYSTEM = Actor("system", None, "fleetd")


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    ts: dt.datetime
    actor_kind: str
    actor_id: str | None
    actor_name: str | None
    action: str
    target: str | None
    outcome: str
    remote_addr: str | None
    details: dict[str, Any]


def record(
    conn: sqlite3.Connection,
    actor: Actor,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    **details: Any,
) -> None:
    """Append one entry; call inside the transaction that makes the change it describes."""
    conn.execute(
        "INSERT INTO audit_log (ts, actor_kind, actor_id, actor_name, action, target, outcome, "
        "remote_addr, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now(), actor.kind, actor.id, actor.name, action, target, outcome, actor.remote_addr,
         json.dumps(details, default=str, sort_keys=True)),
    )


def query(
    conn: sqlite3.Connection,
    *,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
    since: float | None = None,
    until: float | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first. ``action`` matches a prefix (``user.`` finds every user action)."""
    where: list[str] = []
    args: list[Any] = []
    if action:
        where.append("action LIKE ? ESCAPE '\\'")
        args.append(like_pattern(action, "action", prefix=True))
    if actor:
        where.append("(actor_id = ? OR actor_name = ?)")
        args += [actor, actor]
    if target:
        where.append("target = ?")
        args.append(target)
    if outcome:
        where.append("outcome = ?")
        args.append(outcome)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if until is not None:
        where.append("ts < ?")
        args.append(until)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    sql = "SELECT * FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return [
        AuditEntry(
            id=r["id"], ts=to_dt(r["ts"]), actor_kind=r["actor_kind"], actor_id=r["actor_id"],  # type: ignore[arg-type]
            actor_name=r["actor_name"], action=r["action"], target=r["target"], outcome=r["outcome"],
            remote_addr=r["remote_addr"], details=json.loads(r["details"]),
        )
        for r in conn.execute(sql, args)
    ]
