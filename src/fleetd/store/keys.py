"""The fleet's keys for a store: the data dir's files on SQLite; on PostgreSQL, the database's ``fleet_keys`` table,
sealed with the key encryption key (core/sealing.py), so that every replica has the same CA, signing and token keys
and none of them lives on one replica's disk (issue 18; docs/security.md, "Keys at rest").

On PostgreSQL the first replica to start makes the keys, or imports its data dir's when that holds a fleet's keys
(a fleet moved from SQLite keeps its CA: its devices keep trusting it), and inserts them with ``ON CONFLICT DO
NOTHING`` in one transaction, in a fixed order: of replicas starting together, one wins and the others read its
keys back. Every replica makes its own server TLS certificate from the shared CA, for its own names, in its data
dir.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from ..core import pki, sealing
from ..core.config import Settings
from ..core.pki import FleetKeys, KeyMaterial
from ..core.sealing import KeyEncryptionKey, KeyEncryptionKeyError
from .database import Store

log = logging.getLogger(__name__)


def _read(conn: sqlite3.Connection) -> dict[str, tuple[str, bytes]]:
    return {r["name"]: (r["kek_id"], bytes(r["sealed"]))
            for r in conn.execute("SELECT name, kek_id, sealed FROM fleet_keys")}


def _insert(conn: sqlite3.Connection, sealed: dict[str, bytes], kek_id: str) -> None:
    at = time.time()
    for name in KeyMaterial.NAMES:  # always in this order: concurrent inserts wait on the first, never deadlock
        conn.execute("INSERT INTO fleet_keys (name, kek_id, sealed, created_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (name) DO NOTHING", (name, kek_id, sealed[name], at))


def shared_material(store: Store, kek: KeyEncryptionKey, data_dir: Path,
                    previous: KeyEncryptionKey | None = None) -> KeyMaterial:
    """The fleet's key material from the database; made (or imported from ``data_dir``) if it holds none yet;
    re-sealed with ``kek`` where the ``previous`` key sealed it (rotation)."""
    rows = store.read_sync(_read)
    if not rows:
        imported = pki.has_keys(data_dir)
        material = pki.material_in(data_dir, write=False) if imported else pki.new_material()
        store.write_sync(lambda c: _insert(c, {n: kek.seal(n, b) for n, b in material.blobs().items()}, kek.id))
        rows = store.read_sync(_read)
        if _won(kek, rows, material):
            log.info("the fleet's keys are in the database now, sealed with the key encryption key %s (from %s)%s",
                     kek.id, kek.source, f"; imported from {data_dir}" if imported else "")
        else:
            log.info("another replica put the fleet's keys into the database first; this one uses those")
    if previous is not None and any(kek_id == previous.id for kek_id, _ in rows.values()):
        _reseal(store, rows, previous, kek)
        rows = store.read_sync(_read)
    missing = [n for n in KeyMaterial.NAMES if n not in rows]
    if missing:
        raise KeyEncryptionKeyError(f"the database's fleet_keys table lacks {', '.join(missing)}; restore the "
                                    "table from a backup (making new keys would cut off every enrolled device)")
    other = sorted({kek_id for kek_id, _ in rows.values() if kek_id != kek.id})
    if other:
        raise KeyEncryptionKeyError(
            f"the fleet's keys in the database were sealed with the key encryption key {', '.join(other)}, and the "
            f"one from {kek.source} is {kek.id}: give this replica the same key as the others (the key itself, "
            "not a new one); to change the key, give the old one as the previous key too (docs/security.md, "
            "'Keys at rest on PostgreSQL')")
    return KeyMaterial.from_blobs({n: kek.unseal(n, rows[n][1]) for n in KeyMaterial.NAMES})


def _reseal(store: Store, rows: dict[str, tuple[str, bytes]], previous: KeyEncryptionKey,
            kek: KeyEncryptionKey) -> None:
    """Re-seal with ``kek`` the rows ``previous`` sealed, each only if still sealed by it: of replicas rotating at
    once, one changes each row and the others' updates match nothing."""
    fresh = {n: kek.seal(n, previous.unseal(n, sealed))
             for n, (kek_id, sealed) in rows.items() if kek_id == previous.id}

    def write(conn: sqlite3.Connection) -> None:
        for name in KeyMaterial.NAMES:
            if name in fresh:
                conn.execute("UPDATE fleet_keys SET kek_id = ?, sealed = ? WHERE name = ? AND kek_id = ?",
                             (kek.id, fresh[name], name, previous.id))

    store.write_sync(write)
    log.warning("the fleet's keys in the database are re-sealed with the key encryption key %s (from %s) instead of "
                "%s: give every replica the new key, then remove the previous one from the settings", kek.id,
                kek.source, previous.id)


def _won(kek: KeyEncryptionKey, rows: dict[str, tuple[str, bytes]], material: KeyMaterial) -> bool:
    """Whether the rows read back are the ones just inserted (this replica won), not another replica's."""
    kek_id, sealed = rows["ca"]
    return kek_id == kek.id and kek.unseal("ca", sealed) == material.blobs()["ca"]


def load_keys(store: Store, data_dir: Path, settings: Settings, extra_names: list[str] | None = None) -> FleetKeys:
    """The fleet's keys: the data dir's (SQLite), or the database's (PostgreSQL; the key encryption key from the
    settings' file or the environment, core/sealing.py), with this server's own TLS certificate."""
    if store.dsn is None:
        return pki.load_or_create(data_dir, extra_names)
    material = shared_material(store, sealing.load(settings.key_encryption_key_file), data_dir,
                               sealing.load_previous(settings.previous_key_encryption_key_file))
    if pki.has_keys(data_dir):
        if pki.dir_ca_fingerprint(data_dir) != pki.ca_fingerprint(material.ca_cert):
            log.warning("%s holds keys of another CA than the fleet's in the database; the database's are used "
                        "(the files are left as they are)", data_dir)
    else:
        pki.write_public(data_dir, material)
    return pki.with_server_cert(data_dir, material, extra_names)
