"""Admin identity: users (scrypt passwords), API keys, browser sessions, roles.

Functions taking a ``sqlite3.Connection`` run inside the caller's transaction,
so the server (through the writer thread) and the offline CLI (directly on the
data dir) share one implementation. :class:`Authenticator` turns a request's
credentials into a :class:`Principal`.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ..core.clock import new_id, now, to_dt
from ..core.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from ..core.names import ACCOUNT_NAME
from . import audit, storage
from .audit import Actor

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
API_KEY_PREFIX = "fk_"
SESSION_COOKIE = "fleetd_session"
CSRF_HEADER = "x-csrf-token"
_DUMMY_HASH: str | None = None


class Role(enum.StrEnum):
    """What a user or API key may do, lowest first: the one list (tests/test_closed_lists.py checks the others)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


ROLE_RANK: dict[str, int] = {r: i for i, r in enumerate(Role)}


def check_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise InvalidArgument(f"role must be one of {', '.join(Role)}, got {role!r}")
    return role


# --- principals ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``kind``: user, key, device or anonymous."""

    kind: str
    id: str | None = None
    name: str | None = None
    role: str | None = None
    via_session: bool = False
    # A session of a user who must change their password: only the calls that lead there are allowed.
    must_change_password: bool = False

    def has_role(self, minimum: str) -> bool:
        return self.role is not None and ROLE_RANK[self.role] >= ROLE_RANK[minimum]

    def actor(self, remote_addr: str | None = None) -> Actor:
        return Actor(self.kind, self.id, self.name, remote_addr)


ANONYMOUS = Principal("anonymous")


# --- passwords ---------------------------------------------------------------

def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # The one place that hashes. Costly (~0.1 s of CPU): the server calls it only on its PasswordHasher pool.
    return hashlib.scrypt(password.encode()[:MAX_PASSWORD * 4], salt=salt, n=n, r=r, p=p,
                          maxmem=64 * 1024 * 1024, dklen=32)


def hash_password(password: str) -> str:
    """The stored form of ``password`` (no policy check: see :func:`new_password`)."""
    salt = secrets.token_bytes(16)
    h = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(h)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(want))


def check_password_strength(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(f"password must be at most {MAX_PASSWORD} characters")
    if not password.strip():
        raise InvalidArgument("password must not be only spaces; choose one with letters, digits or signs")
    name, pw = username.casefold(), password.casefold()
    # Containment only for names of 3+ characters: a 1-letter name would forbid that letter everywhere.
    if name and (pw == name or (len(name) >= 3 and name in pw)):
        raise InvalidArgument("password must not be or contain the username; choose another one")


@dataclass(frozen=True, slots=True)
class HashedPassword:
    """A new password that passed the policy for ``username``, hashed (see :func:`new_password`)."""

    username: str
    encoded: str


def new_password(password: str, username: str) -> HashedPassword:
    """Check ``password`` against the policy for ``username``, then hash it (slow: the server runs this
    on its PasswordHasher pool)."""
    check_password_strength(password, username)
    return HashedPassword(username, hash_password(password))


def _hashed_for(password: str | HashedPassword, username: str) -> str:
    if isinstance(password, str):
        return new_password(password, username).encoded
    if password.username.casefold() != username.casefold():
        raise InvalidArgument(f"the password was checked for {password.username!r}, not {username!r}")
    return password.encoded


def generate_password(username: str) -> str:
    """A random password that passes the policy for ``username``."""
    while True:
        password = secrets.token_urlsafe(15)
        try:
            check_password_strength(password, username)
        except InvalidArgument:
            continue
        return password


# --- users -------------------------------------------------------------------

class User(msgspec.Struct, kw_only=True):
    id: str
    username: str
    role: str
    must_change_password: bool = False
    disabled: bool = False
    created_at: dt.datetime | None = None


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], username=row["username"], role=row["role"],
                must_change_password=bool(row["must_change_password"]), disabled=bool(row["disabled"]),
                created_at=to_dt(row["created_at"]))


def create_user(conn: sqlite3.Connection, actor: Actor, username: str, password: str | HashedPassword, role: str,
                *, must_change_password: bool = False) -> User:
    """Create a user. A plain ``password`` is checked and hashed here (offline callers); the server passes
    one it hashed on its pool."""
    ACCOUNT_NAME.check(username, "username")
    check_role(role)
    pw_hash = _hashed_for(password, username)
    uid, t = new_id("usr"), now()
    try:
        storage.insert_user(conn, user_id=uid, username=username, password_hash=pw_hash, role=role,
                            must_change_password=must_change_password, at=t)
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"a user named {username!r} already exists") from None
    audit.record(conn, actor, "user.create", uid, username=username, role=role)
    return get_user(conn, username)


def get_user(conn: sqlite3.Connection, username_or_id: str) -> User:
    row = storage.user_by_name_or_id(conn, username_or_id)
    if row is None:
        raise NotFound(f"no user {username_or_id!r}")
    return _user(row)


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [_user(r) for r in storage.users(conn)]


def count_admins(conn: sqlite3.Connection) -> int:
    return storage.count_enabled_admins(conn)


def set_password(conn: sqlite3.Connection, actor: Actor, username: str, password: str | HashedPassword,
                 *, must_change_password: bool = False, replaces: str | None = None) -> User:
    """Set a user's password and end their sessions. With ``replaces`` (the stored hash the caller checked
    the old password against), refuse if the password changed in between."""
    user = get_user(conn, username)
    if replaces is not None and storage.password_hash_of(conn, user.id) != replaces:
        raise Aborted("the password was changed meanwhile; log in again with the new one")
    storage.set_password_hash(conn, user.id, _hashed_for(password, user.username), must_change_password, now())
    # A new password ends every session of that user.
    storage.delete_sessions_of(conn, user.id)
    audit.record(conn, actor, "user.password", user.id, username=user.username)
    return get_user(conn, user.id)


def update_user(conn: sqlite3.Connection, actor: Actor, username: str, *, role: str | None = None,
                disabled: bool | None = None) -> User:
    """Change a role or disable/enable a user. Disabling ends their sessions and suspends their API keys
    (lookup_api_key refuses keys of a disabled owner); enabling them again lets the keys work again."""
    user = get_user(conn, username)
    if role is not None:
        check_role(role)
    demoting = (role is not None and role != Role.ADMIN) or bool(disabled)
    if user.role == Role.ADMIN and not user.disabled and demoting and count_admins(conn) <= 1:
        raise InvalidArgument(f"{user.username} is the last admin; make another admin first")
    if role is not None:
        storage.set_role(conn, user.id, role, now())
    if disabled is not None:
        storage.set_disabled(conn, user.id, disabled, now())
        if disabled:
            storage.delete_sessions_of(conn, user.id)
    keys: dict[str, Any] = {}
    if disabled is not None and (owned := storage.live_key_ids_of(conn, user.id)):
        keys["keys_suspended" if disabled else "keys_resumed"] = owned
    audit.record(conn, actor, "user.update", user.id, username=user.username, role=role, disabled=disabled, **keys)
    return get_user(conn, user.id)


def delete_user(conn: sqlite3.Connection, actor: Actor, username: str) -> None:
    """Delete a user; their API keys are revoked in the same transaction (each revocation audited)."""
    user = get_user(conn, username)
    if user.role == Role.ADMIN and not user.disabled and count_admins(conn) <= 1:
        raise InvalidArgument(f"{user.username} is the last admin; make another admin first")
    t = now()
    for kid in storage.live_key_ids_of(conn, user.id):
        storage.revoke_api_key(conn, kid, t)
        audit.record(conn, actor, "key.revoke", kid, reason=f"owner {user.username} deleted")
    storage.delete_user(conn, user.id)
    audit.record(conn, actor, "user.delete", user.id, username=user.username)


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """What a login needs from the database, read before the (slow) password check."""

    user: User
    password_hash: str


def login_record(conn: sqlite3.Connection, username: str) -> LoginRecord | None:
    row = storage.user_by_name(conn, username)
    return None if row is None else LoginRecord(_user(row), row["password_hash"])


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("x" * MIN_PASSWORD)
    return _DUMMY_HASH


def password_matches(record: LoginRecord | None, password: str) -> bool:
    """True if ``record`` is an enabled user with this password. Slow (one scrypt): the server runs it on
    its PasswordHasher pool. An unknown user costs the same hash, so timing does not reveal which names
    exist."""
    ok = verify_password(password, record.password_hash if record else _dummy_hash())
    return ok and record is not None and not record.user.disabled


def start_session(conn: sqlite3.Connection, record: LoginRecord, hours: int) -> Session:
    """A session for a user whose password was checked against ``record``; refused if the user was
    deleted, disabled or given a new password since."""
    row = storage.login_state(conn, record.user.id)
    if row is None or row["disabled"] or row["password_hash"] != record.password_hash:
        raise Unauthenticated("wrong username or password")
    return create_session(conn, record.user, hours)


def check_login(conn: sqlite3.Connection, username: str, password: str) -> User:
    """The user, if the password is right; Unauthenticated otherwise (same message either way).
    Hashes on the calling thread: for offline use; the server splits it (login_record, password_matches)."""
    record = login_record(conn, username)
    if not password_matches(record, password):
        raise Unauthenticated("wrong username or password")
    assert record is not None
    return record.user


# --- API keys ----------------------------------------------------------------

class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    created_by: str | None = None
    # The user the key acts for: its creator, or the owner of the key that created it; none for keys made
    # offline or by the system. Its role caps the key's; disabling them suspends the key, deleting revokes it.
    owner_id: str | None = None
    # The owner is disabled: the key is refused until they are enabled again.
    suspended: bool = False
    created_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    # Only in the answer to a create call: the secret, shown once.
    key: str | None = None


def _api_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(id=row["id"], name=row["name"], role=row["role"], created_by=row["created_by"],
                  owner_id=row["owner_user_id"], suspended=bool(row["owner_disabled"]),
                  created_at=to_dt(row["created_at"]), expires_at=to_dt(row["expires_at"]),
                  last_used_at=to_dt(row["last_used_at"]), revoked_at=to_dt(row["revoked_at"]))


def _get_api_key(conn: sqlite3.Connection, kid: str) -> ApiKey:
    row = storage.api_key(conn, kid)
    assert row is not None, kid  # written in this transaction
    return _api_key(row)


def _secret_hash(secret: str) -> bytes:
    # Keys are 190 random bits: a fast hash is enough and keeps every request cheap.
    return hashlib.sha256(secret.encode()).digest()


def _owner_for(conn: sqlite3.Connection, actor: Actor) -> str | None:
    """The user a new key acts for: the user creating it, or the owner of the key creating it."""
    if actor.kind == "user":
        return actor.id
    if actor.kind == "key" and actor.id:
        return storage.key_owner(conn, actor.id)
    return None


def create_api_key(conn: sqlite3.Connection, actor: Actor, name: str, role: str,
                   *, expires_at: float | None = None) -> ApiKey:
    ACCOUNT_NAME.check(name, "key name")
    check_role(role)
    kid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    storage.insert_api_key(conn, key_id=kid, name=name, role=role, secret_hash=_secret_hash(secret),
                           created_by=actor.name or actor.id, owner_user_id=_owner_for(conn, actor),
                           created_at=now(), expires_at=expires_at)
    audit.record(conn, actor, "key.create", kid, name=name, role=role)
    created = _get_api_key(conn, kid)
    created.key = f"{API_KEY_PREFIX}{kid}_{secret}"
    return created


def list_api_keys(conn: sqlite3.Connection, include_revoked: bool = False) -> list[ApiKey]:
    return [_api_key(r) for r in storage.api_keys(conn, include_revoked=include_revoked)]


def revoke_api_key(conn: sqlite3.Connection, actor: Actor, key_id_or_name: str) -> ApiKey:
    rows = storage.live_keys_named(conn, key_id_or_name)
    if not rows:
        raise NotFound(f"no active API key with id or name {key_id_or_name!r}")
    if len(rows) > 1:
        raise InvalidArgument(f"{len(rows)} active keys are named {key_id_or_name!r}; revoke by id")
    kid = rows[0]["id"]
    storage.revoke_api_key(conn, kid, now())
    audit.record(conn, actor, "key.revoke", kid, name=rows[0]["name"])
    return _get_api_key(conn, kid)


def lookup_api_key(conn: sqlite3.Connection, token: str) -> Principal | None:
    """The key's principal; None for an unknown key or a wrong secret. One indexed read, no cache, so a
    revocation, a disabled or deleted owner, or an owner's new role counts from the next request."""
    if not token.startswith(API_KEY_PREFIX):
        return None
    kid, _, secret = token[len(API_KEY_PREFIX):].partition("_")
    if not kid or not secret:
        return None
    row = storage.api_key_with_owner(conn, kid)
    if row is None or not hmac.compare_digest(row["secret_hash"], _secret_hash(secret)):
        return None
    if row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] < now()):
        return None
    role = row["role"]
    if row["owner_user_id"] is not None:
        if row["owner_found"] is None:
            return None  # the owner was deleted (delete_user revokes; this covers older data too)
        if row["owner_disabled"]:
            raise Unauthenticated(f"this API key belongs to {row['owner_name']}, who is disabled; it works again "
                                  "when an admin enables them")
        if ROLE_RANK[row["owner_role"]] < ROLE_RANK[role]:
            role = row["owner_role"]  # a key never does more than its owner may do now
    return Principal("key", row["id"], row["name"], role)


# --- sessions ----------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    token: str
    csrf_token: str
    expires_at: float


def create_session(conn: sqlite3.Connection, user: User, hours: int) -> Session:
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    expires = now() + hours * 3600
    storage.delete_expired_sessions(conn, now())
    storage.insert_session(conn, id_hash=_secret_hash(token), user_id=user.id, csrf_token=csrf, created_at=now(),
                           expires_at=expires)
    return Session(token, csrf, expires)


def lookup_session(conn: sqlite3.Connection, token: str) -> tuple[Principal, str] | None:
    row = storage.session_user(conn, _secret_hash(token))
    if row is None or row["expires_at"] < now() or row["disabled"]:
        return None
    return Principal("user", row["id"], row["username"], row["role"], via_session=True,
                     must_change_password=bool(row["must_change_password"])), row["csrf_token"]


def delete_session(conn: sqlite3.Connection, token: str) -> None:
    storage.delete_session(conn, _secret_hash(token))


# --- request authentication --------------------------------------------------

class DeviceTokenVerifier(Protocol):
    prefix: str  # every device token starts with it

    def verify(self, token: str) -> Principal | None: ...


class Reader(Protocol):
    async def read(self, fn):  # type: ignore[no-untyped-def]
        ...


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Authenticator:
    """Credentials of a request → :class:`Principal`.

    ``Authorization: Bearer fk_…`` is an API key, any other bearer token is
    offered to the device-token verifier (no database read); a session cookie
    is a browser, which must echo its CSRF token on every unsafe request.
    """

    def __init__(self, store: Reader, device_tokens: DeviceTokenVerifier | None = None) -> None:
        self.store = store
        self.device_tokens = device_tokens

    async def authenticate(self, method: str, authorization: str | None, session_cookie: str | None,
                           csrf_header: str | None) -> Principal:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <API key or device token>'")
            token = token.strip()
            if token.startswith(API_KEY_PREFIX):
                principal = await self.store.read(lambda c: lookup_api_key(c, token))
                if principal is None:
                    raise Unauthenticated("the API key is unknown, revoked or expired; create a new one "
                                          "with 'fleetd keys create'")
                return principal
            if self.device_tokens is not None:
                device = self.device_tokens.verify(token)
                if device is not None:
                    return device
                if token.startswith(self.device_tokens.prefix):
                    raise Unauthenticated("the device token is invalid or expired; authenticate again")
            raise Unauthenticated(f"the bearer token is not an API key: API keys start with {API_KEY_PREFIX} "
                                  f"({API_KEY_PREFIX}…, shown once when made); create one with 'fleetd keys create "
                                  "--name NAME --role admin' or on the web UI's Users & API keys page")
        if session_cookie:
            found = await self.store.read(lambda c: lookup_session(c, session_cookie))
            if found is None:
                raise Unauthenticated("your session has expired; log in again")
            principal, csrf = found
            if method not in SAFE_METHODS and not (csrf_header and hmac.compare_digest(csrf_header, csrf)):
                raise PermissionDenied("missing or wrong CSRF token (send the X-CSRF-Token header "
                                       "that Login returned)")
            return principal
        return ANONYMOUS
