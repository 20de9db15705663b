"""The audit log: who did what, when, from where, and how it ended."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from ..core.clock import now, to_dt
from ..core.errors import InvalidArgument, NotFound
from ..core.names import SEARCH_MAX, like_pattern
from . import storage


@dataclass(frozen=True)
class Actor:
    """Who did something. ``kind`` is user, key, device, system or anonymous."""

    kind: str
    id: str | None = None
    name: str | None = None
    remote_addr: str | None = None


SYSTEM = Actor("system", None, "fleetd")

# What an entry's type (its ``action``) starts with: the thing acted on. tests/accounts/test_audit_log.py checks
# that every type the server records is in one of these.
FAMILIES = ("action", "alert_rule", "artifact", "auth", "ddi", "device", "key", "manufacturer_ca", "rollout", "token",
            "user", "webhook")
# A grouped entry (one command, many devices) lists this many of its devices and actions; ``count`` says how many.
LISTED = 10


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


def record_batch(conn: sqlite3.Connection, actor: Actor, action: str, action_ids: list[str], device_ids: list[str],
                 **details: Any) -> None:
    """One entry for one command that made an action on each of many devices (a deploy to 50 devices is one line,
    not 50): ``count``, the first :data:`LISTED` devices and action ids; the target is the action when there is one.
    Each action keeps who made it and when (``created_by``, ``created_at``), and the devices' pages list them."""
    if action_ids:
        record(conn, actor, action, action_ids[0] if len(action_ids) == 1 else None, count=len(action_ids),
               devices=device_ids[:LISTED], actions=action_ids[:LISTED],
               **{k: v for k, v in details.items() if v is not None})


def check_types(types: str) -> list[str]:
    """``types``: entry types or their beginnings, comma-separated (``artifact.,key.create``); each must begin like
    one of :data:`FAMILIES`, else the caller hears which exist."""
    if len(types) > SEARCH_MAX:
        raise InvalidArgument(f"action must be at most {SEARCH_MAX} characters, got {len(types)}")
    found = [t.strip() for t in types.split(",") if t.strip()]
    for t in found:
        family = t.split(".", 1)[0]
        if not any(f == family or ("." not in t and f.startswith(t)) for f in FAMILIES):
            raise InvalidArgument(f"no audit entry type begins with {t!r}: types begin with "
                                  f"{', '.join(f + '.' for f in FAMILIES)} (e.g. artifact.create, or device. for "
                                  "every device entry)")
    return found


def check_actor(conn: sqlite3.Connection, actor: str) -> None:
    """An actor filter that names no user, API key or actor in the log is a typo: say which users there are."""
    if len(actor) > SEARCH_MAX:
        raise InvalidArgument(f"actor must be at most {SEARCH_MAX} characters, got {len(actor)}")
    if not storage.actor_is_known(conn, actor):
        users = storage.usernames(conn, 20)
        raise NotFound(f"no user, API key or device named {actor!r} has an audit entry; an actor is a user name "
                       f"({', '.join(users) or 'none yet'}), an API key's name, a device's id or name, or fleetd "
                       "for the server itself")


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
    """Newest first. ``action`` is a type or its beginning (``user.`` finds every user entry), or several,
    comma-separated; ``actor`` an actor's id or name. A type or actor that cannot match anything is an error."""
    types = check_types(action) if action else []
    if actor:
        check_actor(conn, actor)
    rows = storage.audit_entries(conn, action_patterns=[like_pattern(t, "type", prefix=True) for t in types],
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
