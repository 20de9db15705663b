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
from . import storage


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
    storage.insert_audit_entry(conn, ts=now(), actor_kind=actor.kind, actor_id=actor.id, actor_name=actor.name,
                               action=action, target=target, outcome=outcome, remote_addr=actor.remote_addr,
                               details=json.dumps(details, default=str, sort_keys=True))


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
    rows = storage.audit_entries(conn, action_pattern=like_pattern(action, "action", prefix=True) if action else None,
                                 actor=actor, target=target, outcome=outcome, since=since, until=until,
                                 before_id=before_id, limit=limit)
    return [
        AuditEntry(
            id=r["id"], ts=to_dt(r["ts"]), actor_kind=r["actor_kind"], actor_id=r["actor_id"],  # type: ignore[arg-type]
            actor_name=r["actor_name"], action=r["action"], target=r["target"], outcome=r["outcome"],
            remote_addr=r["remote_addr"], details=json.loads(r["details"]),
        )
        for r in rows
    ]
