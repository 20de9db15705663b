"""hawkBit DDI credentials: target tokens (one device) and gateway tokens (the whole tenant).

A DDI client sends ``Authorization: TargetToken <secret>`` or ``GatewayToken <secret>``.
Only the SHA-256 of a secret is stored (secrets are 128 random bits, so a fast hash
is enough). :class:`TokenIndex` keeps every live token in memory, keyed by that hash,
so that authenticating a poll reads no database; the service layer updates it after
each committed change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from dataclasses import dataclass, field

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import now, to_dt
from ..core.effects import Effect
from ..core.errors import InvalidArgument, NotFound
from ..core.names import DEVICE_TYPE
from ..devices.tags import check_tags
from ..store.database import effect
from . import storage

GATEWAY_ID_PREFIX = "ddg_"
TARGET_ID_PREFIX = "ddt_"
MAX_DESCRIPTION = 200


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    # 32 hex characters: fits every client's token buffer (Zephyr, SWUpdate and RAUC read it as a plain string).
    return secrets.token_hex(16)


class GatewayToken(msgspec.Struct, kw_only=True):
    id: str
    description: str = ""
    # What a device this token registers gets.
    device_type: str = ""
    tags: dict[str, str] = {}
    created_by: str | None = None
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    # Only in the answer to a create call: send as "Authorization: GatewayToken <token>".
    token: str | None = None


def _gateway(r: sqlite3.Row) -> GatewayToken:
    return GatewayToken(id=r["id"], description=r["description"], device_type=r["device_type"],
                        tags=json.loads(r["tags"]), created_by=r["created_by"], created_at=to_dt(r["created_at"]),
                        revoked_at=to_dt(r["revoked_at"]))


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A live token as the hot path needs it."""

    id: str
    kind: str  # target or gateway
    device_id: str | None = None
    device_type: str = ""
    tags: dict[str, str] = field(default_factory=dict)


class TokenAdded(Effect, frozen=True):
    """A new live token (by the hash of its secret; the secret itself never leaves the write)."""

    hash: bytes
    entry: TokenEntry


class TokensDropped(Effect, frozen=True):
    hashes: tuple[bytes, ...]


class GatewayRevoked(Effect, frozen=True):
    token_id: str


def check_device_type(device_type: str) -> str:
    return DEVICE_TYPE.check(device_type) if device_type else device_type


def create_gateway(conn: sqlite3.Connection, actor: Actor, *, description: str = "", device_type: str = "",
                   tags: dict[str, str] | None = None) -> tuple[GatewayToken, str]:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is at most {MAX_DESCRIPTION} characters")
    check_device_type(device_type)
    tags = check_tags(dict(tags or {}))
    tid, secret = GATEWAY_ID_PREFIX + secrets.token_hex(6), new_secret()
    storage.insert_gateway_token(conn, token_id=tid, secret_hash=secret_hash(secret), device_type=device_type,
                                 tags=json.dumps(tags), description=description, created_by=actor.name or actor.id,
                                 created_at=now())
    audit.record(conn, actor, "ddi.gateway_token.create", tid, device_type=device_type, tags=tags)
    effect(conn, TokenAdded(secret_hash(secret), TokenEntry(tid, "gateway", None, device_type, tags)))
    return get_gateway(conn, tid), secret


def get_gateway(conn: sqlite3.Connection, token_id: str) -> GatewayToken:
    r = storage.gateway_token(conn, token_id)
    if r is None:
        raise NotFound(f"no DDI gateway token {token_id!r} ('fleetd tokens list --ddi-gateway' lists them)")
    return _gateway(r)


def list_gateways(conn: sqlite3.Connection, include_revoked: bool = False) -> list[GatewayToken]:
    return [_gateway(r) for r in storage.gateway_tokens(conn, include_revoked=include_revoked)]


def revoke_gateway(conn: sqlite3.Connection, actor: Actor, token_id: str) -> GatewayToken:
    tok = get_gateway(conn, token_id)
    if tok.revoked_at is None:
        storage.revoke_token(conn, token_id, now())
        audit.record(conn, actor, "ddi.gateway_token.revoke", token_id)
        effect(conn, GatewayRevoked(token_id))
    return get_gateway(conn, token_id)


def replace_target(conn: sqlite3.Connection, actor: Actor, device_id: str) -> tuple[str, str]:
    """A new target token for a device; its previous ones stop working. Returns (id, secret)."""
    old = revoke_targets_rows(conn, device_id)
    tid, secret = TARGET_ID_PREFIX + secrets.token_hex(6), new_secret()
    storage.insert_target_token(conn, token_id=tid, secret_hash=secret_hash(secret), device_id=device_id,
                                created_by=actor.name or actor.id, created_at=now())
    audit.record(conn, actor, "ddi.target_token.create", device_id, token=tid, replaced=len(old))
    effect(conn, TokenAdded(secret_hash(secret), TokenEntry(tid, "target", device_id)))
    return tid, secret


def revoke_targets_rows(conn: sqlite3.Connection, device_id: str) -> list[bytes]:
    hashes = storage.revoke_target_tokens(conn, device_id, now())
    if hashes:
        effect(conn, TokensDropped(tuple(hashes)))
    return hashes


def revoke_targets(conn: sqlite3.Connection, actor: Actor, device_id: str) -> list[bytes]:
    hashes = revoke_targets_rows(conn, device_id)
    audit.record(conn, actor, "ddi.target_token.revoke", device_id, revoked=len(hashes))
    return hashes


def load_live(conn: sqlite3.Connection) -> dict[bytes, TokenEntry]:
    out = {}
    for r in storage.live_tokens(conn):
        out[bytes(r["secret_hash"])] = TokenEntry(r["id"], r["kind"], r["device_id"], r["device_type"],
                                                  json.loads(r["tags"]))
    return out


class TokenIndex:
    """Live tokens by secret hash, in memory."""

    def __init__(self, entries: dict[bytes, TokenEntry]) -> None:
        self._by_hash = entries

    def lookup(self, kind: str, secret: str) -> TokenEntry | None:
        entry = self._by_hash.get(secret_hash(secret))
        return entry if entry is not None and entry.kind == kind else None

    def replace(self, entries: dict[bytes, TokenEntry]) -> None:
        self._by_hash = entries

    # The effects of committed token changes (the handlers Fleet registers with the store).
    def added(self, e: TokenAdded) -> None:
        self._by_hash[e.hash] = e.entry

    def dropped(self, e: TokensDropped) -> None:
        for h in e.hashes:
            self._by_hash.pop(h, None)

    def gateway_revoked(self, e: GatewayRevoked) -> None:
        for h in [h for h, entry in self._by_hash.items() if entry.id == e.token_id]:
            del self._by_hash[h]
