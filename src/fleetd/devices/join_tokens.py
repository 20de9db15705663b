"""Join tokens: what an admin hands a device so it enrolls active (and re-key tokens bound to one device).

Functions taking a ``sqlite3.Connection`` run inside the caller's write transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import now, to_dt
from ..core.errors import InvalidArgument, NotFound, Unauthenticated
from . import storage
from .tags import check_tags

JOIN_TOKEN_PREFIX = "fdj1"


class JoinToken(msgspec.Struct, kw_only=True):
    id: str
    description: str
    tags: dict[str, str]
    max_uses: int | None
    uses: int
    expires_at: dt.datetime | None
    created_by: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    # A re-key token ('fleetd devices rekey'): it replaces this one device's key, nothing else.
    device_id: str | None = None
    # Only in the answer to a create call.
    token: str | None = None
    install_command: str | None = None


def _join_token(r: sqlite3.Row) -> JoinToken:
    return JoinToken(id=r["id"], description=r["description"], tags=json.loads(r["tags"]), max_uses=r["max_uses"],
                     uses=r["uses"], expires_at=to_dt(r["expires_at"]), created_by=r["created_by"],
                     created_at=to_dt(r["created_at"]), revoked_at=to_dt(r["revoked_at"]),  # type: ignore[arg-type]
                     device_id=r["device_id"])


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def format_join_token(ca_fingerprint: str, token_id: str, secret: str) -> str:
    return f"{JOIN_TOKEN_PREFIX}.{ca_fingerprint}.{token_id}.{secret}"


@dataclass(frozen=True)
class ParsedJoinToken:
    ca_fingerprint: str
    id: str
    secret: str


def parse_join_token(token: str) -> ParsedJoinToken:
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != JOIN_TOKEN_PREFIX:
        raise InvalidArgument("a join token looks like fdj1.<CA fingerprint>.<id>.<secret>; "
                              "copy it whole from 'fleetd tokens create'")
    _, fp, tid, secret = parts
    if not re.fullmatch(r"[0-9a-f]{64}", fp) or not re.fullmatch(r"[0-9a-f]{12}", tid) \
            or not re.fullmatch(r"[0-9a-f]{32}", secret):
        raise InvalidArgument("the join token is malformed; copy it whole from 'fleetd tokens create'")
    return ParsedJoinToken(fp, tid, secret)


def create_token(conn: sqlite3.Connection, actor: Actor, *, description: str = "", tags: dict[str, str] | None = None,
                 max_uses: int | None = None, expires_at: float | None = None) -> tuple[JoinToken, str]:
    tags = check_tags(dict(tags or {}))
    if max_uses is not None and max_uses < 1:
        raise InvalidArgument("uses must be at least 1 (or unlimited)")
    if len(description) > 200:
        raise InvalidArgument("description is at most 200 characters")
    tid, secret = insert_token(conn, actor, description, tags, max_uses, expires_at, None)
    audit.record(conn, actor, "token.create", tid, tags=tags, max_uses=max_uses, expires_at=expires_at)
    return get_token(conn, tid), secret


def insert_token(conn: sqlite3.Connection, actor: Actor, description: str, tags: dict[str, str],
                 max_uses: int | None, expires_at: float | None, device_id: str | None) -> tuple[str, str]:
    tid, secret = secrets.token_hex(6), secrets.token_hex(16)
    storage.insert_join_token(conn, token_id=tid, secret_hash=_hash(secret), description=description,
                              tags=json.dumps(tags), max_uses=max_uses, expires_at=expires_at,
                              created_by=actor.name or actor.id, created_at=now(), device_id=device_id)
    return tid, secret


def get_token(conn: sqlite3.Connection, token_id: str) -> JoinToken:
    r = storage.join_token(conn, token_id)
    if r is None:
        raise NotFound(f"no join token {token_id!r}")
    return _join_token(r)


def list_tokens(conn: sqlite3.Connection, include_inactive: bool = False, limit: int = -1,
                offset: int = 0) -> tuple[list[JoinToken], int]:
    """One page of the join tokens, newest first, and how many there are."""
    rows, total = storage.join_token_page(conn, usable_at=None if include_inactive else now(), limit=limit,
                                          offset=offset)
    return [_join_token(r) for r in rows], total


def revoke_token(conn: sqlite3.Connection, actor: Actor, token_id: str) -> JoinToken:
    tok = get_token(conn, token_id)
    if tok.revoked_at is None:
        storage.revoke_join_token(conn, token_id, now())
        audit.record(conn, actor, "token.revoke", token_id)
    return get_token(conn, token_id)


def check_token(conn: sqlite3.Connection, parsed: ParsedJoinToken, ca_fingerprint: str) -> JoinToken:
    """The join token, refused with the reason when it is no good; no use is counted (see :func:`use_token`)."""
    if parsed.ca_fingerprint != ca_fingerprint:
        raise Unauthenticated("this join token belongs to another fleetd server (CA fingerprint differs)")
    r = storage.join_token(conn, parsed.id)
    if r is None or not hmac.compare_digest(r["secret_hash"], _hash(parsed.secret)):
        raise Unauthenticated("unknown join token; ask the admin for a new one")
    if r["revoked_at"] is not None:
        raise Unauthenticated("this join token was revoked; ask the admin for a new one")
    if r["expires_at"] is not None and r["expires_at"] < now():
        raise Unauthenticated("this join token has expired; ask the admin for a new one")
    if r["max_uses"] is not None and r["uses"] >= r["max_uses"]:
        raise Unauthenticated("this join token is used up; ask the admin for a new one")
    return _join_token(r)


def use_token(conn: sqlite3.Connection, token: JoinToken) -> None:
    storage.count_join_token_use(conn, token.id)
