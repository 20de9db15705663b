"""Sealing the fleet's key material for the database (replicas on PostgreSQL; docs/security.md, "Keys at rest").

AES-256-GCM (``cryptography``'s AESGCM) under the key encryption key (KEK): 32 random bytes, base64, from the
environment (``FLEETD_KEY_ENCRYPTION_KEY``) or a file (the ``key_encryption_key_file`` setting), never stored in
the database. Each sealed value is a fresh 96-bit nonce followed by the ciphertext and its 128-bit tag; the value's
name is the associated data, so a sealed CA key cannot be passed off as the token key. A KEK is known by its id, a
hash of it that tells a wrong key from damaged data without revealing anything of the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import FailedPrecondition

KEK_ENV = "FLEETD_KEY_ENCRYPTION_KEY"
# Rotation: the key the database's keys were sealed with until now; a replica that has both re-seals them.
PREVIOUS_KEK_ENV = "FLEETD_KEY_ENCRYPTION_KEY_PREVIOUS"
KEK_BYTES = 32
NONCE_BYTES = 12
HOW_TO_MAKE = ("make one with 'openssl rand -base64 32 > /etc/fleetd/kek && chmod 600 /etc/fleetd/kek' and give it "
               "to every replica: the key_encryption_key_file setting (env FLEETD_KEY_ENCRYPTION_KEY_FILE) naming that "
               f"file, or the key itself in the environment variable {KEK_ENV}; keep a copy apart from the "
               "database's backups (docs/security.md, 'Keys at rest')")


class KeyEncryptionKeyError(FailedPrecondition):
    """No key encryption key, a malformed one, or not the one the database's keys were sealed with."""


class KeyEncryptionKey:
    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEK_BYTES:
            raise KeyEncryptionKeyError(f"the key encryption key from {source} has {len(key)} bytes, not "
                                        f"{KEK_BYTES}; {HOW_TO_MAKE}")
        self._aead = AESGCM(key)
        self.source = source
        self.id = hashlib.sha256(b"fleetd key encryption key id\0" + key).hexdigest()[:16]

    def seal(self, name: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def unseal(self, name: str, sealed: bytes) -> bytes:
        """The plaintext; KeyEncryptionKeyError if the value was not sealed by this key under this name (or is
        damaged)."""
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
        except (InvalidTag, ValueError):
            raise KeyEncryptionKeyError(
                f"the fleet key {name!r} in the database does not decrypt with the key encryption key from "
                f"{self.source} (id {self.id}), although it was sealed with a key of that id: the row is damaged; "
                "restore the fleet_keys table from a backup") from None


def parse(text: str, source: str) -> KeyEncryptionKey:
    """A KEK from its base64 text (standard or URL-safe alphabet, padding optional, surrounding space ignored)."""
    raw = "".join(text.split())
    try:
        key = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyEncryptionKeyError(f"the key encryption key from {source} is not base64; {HOW_TO_MAKE}") from None
    return KeyEncryptionKey(key, source)


def load_previous(key_file: str, environ: Mapping[str, str] | None = None) -> KeyEncryptionKey | None:
    """The previous KEK, while rotating (the previous_key_encryption_key_file setting, or the environment); None
    when neither gives one."""
    return _load(key_file, PREVIOUS_KEK_ENV, "previous_key_encryption_key_file", environ, required=False)


def load(key_file: str, environ: Mapping[str, str] | None = None) -> KeyEncryptionKey:
    """The KEK from the file ``key_file`` (the setting; "" for none) or the environment; a KeyEncryptionKeyError
    that says how to make one when neither gives it, or when both do (which one is meant?)."""
    kek = _load(key_file, KEK_ENV, "key_encryption_key_file", environ, required=True)
    assert kek is not None
    return kek


def _load(key_file: str, variable: str, setting: str, environ: Mapping[str, str] | None,
          required: bool) -> KeyEncryptionKey | None:
    env = os.environ if environ is None else environ
    text = env.get(variable, "")
    if key_file and text:
        raise KeyEncryptionKeyError(f"both {variable} and {setting} ({key_file}) are set; keep one")
    if key_file:
        path = Path(key_file).expanduser()
        try:
            return parse(path.read_text(), str(path))
        except OSError as e:
            raise KeyEncryptionKeyError(f"cannot read the key encryption key file {path}: {e.strerror}; check "
                                        f"the {setting} setting, or " + HOW_TO_MAKE) from None
    if text:
        return parse(text, variable)
    if not required:
        return None
    raise KeyEncryptionKeyError("a fleet on PostgreSQL keeps its keys (CA, signing and token keys) in the database, "
                                "encrypted with a key encryption key, and none is set; " + HOW_TO_MAKE)
