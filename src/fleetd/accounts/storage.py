"""The accounts package's SQL: users, API keys, sessions and the audit log (docs/architecture.md, "Where SQL
lives"). Small named functions that take the store's connection and plain values and return rows or plain
values; the rules (roles, the last admin, expiry) stay in users.py and audit.py.
"""

from __future__ import annotations

import sqlite3

from ..store.dialect import dialect_of
from ..store.where import Where

# --- users ----------------------------------------------------------------------------------------------------


def insert_user(conn: sqlite3.Connection, *, user_id: str, username: str, password_hash: str, role: str,
                must_change_password: bool, at: float) -> None:
    """A new user; raises sqlite3.IntegrityError when the username is taken."""
    conn.execute("INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, "
                 "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (user_id, username, password_hash, role, int(must_change_password), at, at))


def user_by_name_or_id(conn: sqlite3.Connection, username_or_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM users WHERE username = ? OR id = ?",
                        (username_or_id, username_or_id)).fetchone()


def user_by_name(conn: sqlite3.Connection, username: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()


def users(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every user, by username."""
    return conn.execute("SELECT * FROM users ORDER BY username").fetchall()


def count_enabled_admins(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0").fetchone()[0])


def password_hash_of(conn: sqlite3.Connection, user_id: str) -> str | None:
    row = conn.execute("SELECT password_hash FROM users WHERE id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def login_state(conn: sqlite3.Connection, user_id: str) -> sqlite3.Row | None:
    """password_hash and disabled of a user."""
    return conn.execute("SELECT password_hash, disabled FROM users WHERE id = ?", (user_id,)).fetchone()


def set_password_hash(conn: sqlite3.Connection, user_id: str, password_hash: str, must_change_password: bool,
                      at: float) -> None:
    conn.execute("UPDATE users SET password_hash = ?, must_change_password = ?, updated_at = ? WHERE id = ?",
                 (password_hash, int(must_change_password), at, user_id))


def set_role(conn: sqlite3.Connection, user_id: str, role: str, at: float) -> None:
    conn.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", (role, at, user_id))


def set_disabled(conn: sqlite3.Connection, user_id: str, disabled: bool, at: float) -> None:
    conn.execute("UPDATE users SET disabled = ?, updated_at = ? WHERE id = ?", (int(disabled), at, user_id))


def delete_user(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM users WHERE id = ?", (user_id,))


# --- API keys -------------------------------------------------------------------------------------------------

# A key with owner_disabled (whether its owner is disabled; None without an owner).
_KEY_SELECT = ("SELECT k.*, u.disabled AS owner_disabled FROM api_keys k "
               "LEFT JOIN users u ON u.id = k.owner_user_id")
# A key with what its owner may do now: owner_found (None once the owner is deleted), owner_name, owner_role,
# owner_disabled.
_KEY_WITH_OWNER = (
    "SELECT k.id, k.name, k.role, k.secret_hash, k.expires_at, k.revoked_at, k.owner_user_id, "
    "u.id AS owner_found, u.username AS owner_name, u.role AS owner_role, u.disabled AS owner_disabled "
    "FROM api_keys k LEFT JOIN users u ON u.id = k.owner_user_id WHERE k.id = ?")


def insert_api_key(conn: sqlite3.Connection, *, key_id: str, name: str, role: str, secret_hash: bytes,
                   created_by: str | None, owner_user_id: str | None, created_at: float,
                   expires_at: float | None) -> None:
    conn.execute(
        "INSERT INTO api_keys (id, name, role, secret_hash, created_by, owner_user_id, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (key_id, name, role, secret_hash, created_by, owner_user_id, created_at, expires_at))


def api_key(conn: sqlite3.Connection, key_id: str) -> sqlite3.Row | None:
    """The key with owner_disabled."""
    return conn.execute(_KEY_SELECT + " WHERE k.id = ?", (key_id,)).fetchone()


def api_keys(conn: sqlite3.Connection, *, include_revoked: bool) -> list[sqlite3.Row]:
    """The keys with owner_disabled, oldest first."""
    sql = _KEY_SELECT
    if not include_revoked:
        sql += " WHERE k.revoked_at IS NULL"
    return conn.execute(sql + " ORDER BY k.created_at").fetchall()


def api_key_with_owner(conn: sqlite3.Connection, key_id: str) -> sqlite3.Row | None:
    """The key (id, name, role, secret_hash, expires_at, revoked_at, owner_user_id) with owner_found,
    owner_name, owner_role and owner_disabled: what authenticating a request with it needs."""
    return conn.execute(_KEY_WITH_OWNER, (key_id,)).fetchone()


def key_owner(conn: sqlite3.Connection, key_id: str) -> str | None:
    """The owner_user_id of a key (None for no key or no owner)."""
    row = conn.execute("SELECT owner_user_id FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    return row[0] if row else None


def live_key_ids_of(conn: sqlite3.Connection, user_id: str) -> list[str]:
    """The ids of the keys a user owns that are not revoked."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM api_keys WHERE owner_user_id = ? AND revoked_at IS NULL ORDER BY id", (user_id,))]


def live_keys_named(conn: sqlite3.Connection, key_id_or_name: str) -> list[sqlite3.Row]:
    """The keys not revoked with this id or name."""
    return conn.execute("SELECT * FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                        (key_id_or_name, key_id_or_name)).fetchall()


def revoke_api_key(conn: sqlite3.Connection, key_id: str, at: float) -> None:
    conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (at, key_id))


# --- sessions -------------------------------------------------------------------------------------------------

_SESSION = ("SELECT u.id, u.username, u.role, u.disabled, u.must_change_password, s.csrf_token, s.expires_at "
            "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?")


def delete_expired_sessions(conn: sqlite3.Connection, at: float) -> int:
    """Deletes the sessions that expired before ``at``; how many."""
    return int(conn.execute("DELETE FROM sessions WHERE expires_at < ?", (at,)).rowcount)


def insert_session(conn: sqlite3.Connection, *, id_hash: bytes, user_id: str, csrf_token: str, created_at: float,
                   expires_at: float) -> None:
    conn.execute("INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) "
                 "VALUES (?, ?, ?, ?, ?)", (id_hash, user_id, csrf_token, created_at, expires_at))


def session_user(conn: sqlite3.Connection, id_hash: bytes) -> sqlite3.Row | None:
    """The session's csrf_token and expires_at with its user's id, username, role, disabled and
    must_change_password."""
    return conn.execute(_SESSION, (id_hash,)).fetchone()


def delete_session(conn: sqlite3.Connection, id_hash: bytes) -> None:
    conn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))


def delete_sessions_of(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


# --- the audit log --------------------------------------------------------------------------------------------

def insert_audit_entry(conn: sqlite3.Connection, *, ts: float, actor_kind: str, actor_id: str | None,
                       actor_name: str | None, action: str, target: str | None, outcome: str,
                       remote_addr: str | None, details: str) -> None:
    """One audit entry; ``details`` JSON text."""
    conn.execute(
        "INSERT INTO audit_log (ts, actor_kind, actor_id, actor_name, action, target, outcome, "
        "remote_addr, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ts, actor_kind, actor_id, actor_name, action, target, outcome, remote_addr, details))


def audit_entries(conn: sqlite3.Connection, *, action_patterns: list[str], actor: str | None, target: str | None,
                  outcome: str | None, since: float | None, until: float | None, before_id: int | None,
                  limit: int) -> list[sqlite3.Row]:
    """Audit entries, newest first: ``action_patterns`` LIKE patterns (``ESCAPE '\\'``), any of which matches,
    ``actor`` an actor id or name; ``since`` inclusive, ``until`` and ``before_id`` exclusive."""
    w = Where()
    if action_patterns:
        w.add("(" + " OR ".join(["action LIKE ? ESCAPE '\\'"] * len(action_patterns)) + ")", *action_patterns)
    if actor:
        w.add("(actor_id = ? OR actor_name = ?)", actor, actor)
    w.equal("target", target)
    w.equal("outcome", outcome)
    if since is not None:
        w.add("ts >= ?", since)
    if until is not None:
        w.add("ts < ?", until)
    if before_id is not None:
        w.add("id < ?", before_id)
    return conn.execute(f"SELECT * FROM audit_log{w.sql} ORDER BY id DESC LIMIT ?", [*w.args, limit]).fetchall()


def actor_is_known(conn: sqlite3.Connection, actor: str) -> bool:
    """A user or API key has this id or name, or an audit entry was made by an actor of that id or name."""
    return conn.execute(
        "SELECT 1 FROM users WHERE id = ? OR username = ? UNION ALL SELECT 1 FROM api_keys WHERE id = ? OR name = ? "
        "UNION ALL SELECT 1 FROM audit_log WHERE actor_id = ? OR actor_name = ? LIMIT 1", (actor,) * 6
    ).fetchone() is not None


def usernames(conn: sqlite3.Connection, limit: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT username FROM users ORDER BY username LIMIT ?", (limit,))]


# --- gauges ------------------------------------------------------------------------------------------------------

def any_user(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def enabled_user_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM users WHERE disabled = 0").fetchone()[0])


def active_api_key_count(conn: sqlite3.Connection) -> int:
    """API keys neither revoked nor expired, by the database's clock."""
    return int(conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND "
                            f"(expires_at IS NULL OR expires_at > {dialect_of(conn).now_epoch()})").fetchone()[0])


def audit_entries_written(conn: sqlite3.Connection) -> int:
    """Audit entries ever written: the id sequence, not COUNT(*), which goes down when old entries are pruned."""
    return int(conn.execute(f"SELECT {dialect_of(conn).last_id('audit_log')}").fetchone()[0])
