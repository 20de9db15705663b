"""Device authentication challenges: the nonce GetChallenge gives, taken once by Authenticate.

A single server (SQLite) keeps them in memory (devauth.DeviceTokens: :class:`MemoryChallenges`). Replicas behind a
load balancer must accept on one the challenge another gave: :class:`SignedChallenges` makes a nonce that every
replica can check without a record — it carries its expiry and an HMAC under the fleet's token key (the same on
every replica, store/keys.py) over the device id — and records only its use, in the used_challenges table, so that
it stays single use across replicas. GetChallenge, which anyone may call, then writes nothing; a use is one small
write, and the uses of expired nonces are deleted by the next one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import struct
import time

from ..core.errors import Unauthenticated
from ..store.database import Store
from . import storage
from .devauth import CHALLENGE_TTL, DeviceTokens, b64d, b64e

_RANDOM = 18


class MemoryChallenges:
    """The challenges of one process, in its memory (a single server)."""

    def __init__(self, tokens: DeviceTokens) -> None:
        self.tokens = tokens

    def new(self, device_id: str) -> str:
        return self.tokens.new_challenge(device_id)

    async def take(self, device_id: str, nonce: str) -> None:
        self.tokens.take_challenge(device_id, nonce)


class SignedChallenges:
    """Challenges that any replica checks: ``<random and expiry>.<mac>``, the use recorded in the database."""

    def __init__(self, store: Store, token_key: bytes, ttl: int = CHALLENGE_TTL) -> None:
        self.store, self.ttl = store, ttl
        self._key = hashlib.sha256(b"fleetd device challenges\0" + token_key).digest()

    def _mac(self, device_id: str, body: str) -> str:
        return b64e(hmac.new(self._key, f"{device_id}\0{body}".encode(), hashlib.sha256).digest()[:18])

    def new(self, device_id: str) -> str:
        body = b64e(secrets.token_bytes(_RANDOM) + struct.pack(">Q", int(time.time()) + self.ttl))
        return f"{body}.{self._mac(device_id, body)}"

    async def take(self, device_id: str, nonce: str) -> None:
        body, _, mac = nonce.partition(".")
        try:
            raw = b64d(body) if body.isascii() and len(body) <= 64 else b""
        except ValueError:
            raw = b""
        if len(raw) != _RANDOM + 8 or not hmac.compare_digest(mac.encode(), self._mac(device_id, body).encode()):
            raise Unauthenticated("unknown challenge, or one issued to another device; ask for a new one")
        expires = struct.unpack(">Q", raw[_RANDOM:])[0]
        if expires < time.time():
            raise Unauthenticated("the challenge expired; ask for a new one")

        def use(conn: sqlite3.Connection) -> None:
            storage.forget_used_challenges(conn, time.time())
            if not storage.use_challenge(conn, body, expires):
                raise Unauthenticated("this challenge was already used; ask for a new one")

        await self.store.write(use)


def challenges_for(store: Store, tokens: DeviceTokens) -> MemoryChallenges | SignedChallenges:
    """In memory on SQLite (one process); signed, their use in the database, on PostgreSQL (replicas)."""
    return MemoryChallenges(tokens) if store.dsn is None else SignedChallenges(store, tokens.key)
