"""UserService: admin users, sessions and API keys."""

from __future__ import annotations

import datetime as dt

import msgspec
from litestar.datastructures import Cookie

from ..core.clock import now, to_dt
from ..core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from ..core.fields import Seconds
from ..core.names import ACCOUNT_NAME
from ..http.rpc import Context, Empty, Service
from . import audit
from . import users as auth
from .users import ApiKey, User

service = Service("UserService", "Admin users, browser sessions and API keys.")


class LoginRequest(msgspec.Struct, kw_only=True):
    username: str
    password: str


class LoginResponse(msgspec.Struct, kw_only=True):
    user: User
    csrf_token: str
    expires_at: dt.datetime


async def _checked_login(ctx: Context, username: str, password: str) -> auth.LoginRecord:
    """Read the user (a reader thread), check the password (the hashing pool); Unauthenticated if wrong."""
    fleet = ctx.fleet
    await fleet.login_limiter.hit(ctx.remote_addr or "?")
    record = await fleet.store.read(lambda c: auth.login_record(c, username))
    if not await fleet.passwords.run(auth.password_matches, record, password):
        actor = audit.Actor("anonymous", None, username[:64], ctx.remote_addr)
        await fleet.store.write(lambda c: audit.record(c, actor, "auth.login", username[:64], outcome="denied"))
        raise Unauthenticated("wrong username or password")
    assert record is not None
    return record


@service.method(auth="public")
async def Login(ctx: Context, req: LoginRequest) -> LoginResponse:
    """Check a username and password; start a browser session (HTTP-only cookie)."""
    fleet = ctx.fleet
    record = await _checked_login(ctx, req.username, req.password)
    user = record.user

    def login(conn):  # type: ignore[no-untyped-def]
        session = auth.start_session(conn, record, fleet.settings.session_hours)
        audit.record(conn, audit.Actor("user", user.id, user.username, ctx.remote_addr), "auth.login", user.id)
        return session

    # Only the session row and its audit entry go through the writer: the hash ran on the pool.
    session = await fleet.store.write(login)
    ctx.set_cookie(Cookie(key=auth.SESSION_COOKIE, value=session.token, httponly=True, samesite="strict",
                          secure=fleet.settings.tls, path="/", max_age=fleet.settings.session_hours * 3600))
    return LoginResponse(user=user, csrf_token=session.csrf_token, expires_at=to_dt(session.expires_at))  # type: ignore[arg-type]


@service.method(auth="viewer", before_password_change=True)
async def Logout(ctx: Context, req: Empty) -> Empty:
    """End this browser session."""
    token = ctx.request.cookies.get(auth.SESSION_COOKIE) if ctx.request else None
    if token:
        def logout(conn):  # type: ignore[no-untyped-def]
            auth.delete_session(conn, token)
            audit.record(conn, ctx.actor, "auth.logout", ctx.principal.id)
        await ctx.fleet.store.write(logout)
    ctx.set_cookie(Cookie(key=auth.SESSION_COOKIE, value="", max_age=0, httponly=True, path="/"))
    return Empty()


class WhoAmIResponse(msgspec.Struct, kw_only=True):
    kind: str
    id: str | None
    name: str | None
    role: str | None
    must_change_password: bool = False


@service.method(auth="viewer", readonly=True, before_password_change=True)
async def WhoAmI(ctx: Context, req: Empty) -> WhoAmIResponse:
    """Who the caller is: a user (session) or an API key, and its role."""
    p = ctx.principal
    must_change = False
    if p.kind == "user" and p.id:
        uid = p.id
        user = await ctx.fleet.store.read(lambda c: auth.get_user(c, uid))
        must_change = user.must_change_password
    return WhoAmIResponse(kind=p.kind, id=p.id, name=p.name, role=p.role, must_change_password=must_change)


class ChangePasswordRequest(msgspec.Struct, kw_only=True):
    old_password: str
    new_password: str


@service.method(auth="viewer", before_password_change=True)
async def ChangePassword(ctx: Context, req: ChangePasswordRequest) -> User:
    """Change the caller's own password (users only); ends the user's sessions."""
    p = ctx.principal
    if p.kind != "user" or not p.name:
        raise PermissionDenied("only a logged-in user can change their password")
    record = await _checked_login(ctx, p.name, req.old_password)
    hashed = await ctx.fleet.passwords.run(auth.new_password, req.new_password, record.user.username)
    return await ctx.fleet.store.write(
        lambda c: auth.set_password(c, ctx.actor, record.user.id, hashed, replaces=record.password_hash))


class ListUsersResponse(msgspec.Struct, kw_only=True):
    users: list[User]


@service.method(auth="admin", readonly=True)
async def ListUsers(ctx: Context, req: Empty) -> ListUsersResponse:
    """Every admin user."""
    return ListUsersResponse(users=await ctx.fleet.store.read(auth.list_users))


class CreateUserRequest(msgspec.Struct, kw_only=True):
    username: str
    role: str
    # Generated (and returned once) when empty.
    password: str = ""


class CreateUserResponse(msgspec.Struct, kw_only=True):
    user: User
    # Only set when the server generated the password.
    password: str | None = None


@service.method(auth="admin")
async def CreateUser(ctx: Context, req: CreateUserRequest) -> CreateUserResponse:
    """Create a user; without a password, one is generated and returned once."""
    generated = not req.password
    password = auth.generate_password(req.username) if generated else req.password
    ACCOUNT_NAME.check(req.username, "username")
    hashed = await ctx.fleet.passwords.run(auth.new_password, password, req.username)
    user = await ctx.fleet.store.write(
        lambda c: auth.create_user(c, ctx.actor, req.username, hashed, req.role,
                                   must_change_password=generated))
    return CreateUserResponse(user=user, password=password if generated else None)


class UpdateUserRequest(msgspec.Struct, kw_only=True):
    username: str
    role: str | None = None
    disabled: bool | None = None


@service.method(auth="admin")
async def UpdateUser(ctx: Context, req: UpdateUserRequest) -> User:
    """Change a user's role or disable/enable them."""
    return await ctx.fleet.store.write(
        lambda c: auth.update_user(c, ctx.actor, req.username, role=req.role, disabled=req.disabled))


class SetPasswordRequest(msgspec.Struct, kw_only=True):
    username: str
    password: str


@service.method(auth="admin")
async def SetPassword(ctx: Context, req: SetPasswordRequest) -> User:
    """Set another user's password; they must change it at next login."""
    user = await ctx.fleet.store.read(lambda c: auth.get_user(c, req.username))
    hashed = await ctx.fleet.passwords.run(auth.new_password, req.password, user.username)
    return await ctx.fleet.store.write(
        lambda c: auth.set_password(c, ctx.actor, user.id, hashed, must_change_password=True))


class DeleteUserRequest(msgspec.Struct, kw_only=True):
    username: str


@service.method(auth="admin")
async def DeleteUser(ctx: Context, req: DeleteUserRequest) -> Empty:
    """Delete a user (never the last admin)."""
    await ctx.fleet.store.write(lambda c: auth.delete_user(c, ctx.actor, req.username))
    return Empty()


class ListKeysRequest(msgspec.Struct, kw_only=True):
    include_revoked: bool = False


class ListKeysResponse(msgspec.Struct, kw_only=True):
    keys: list[ApiKey]


@service.method(auth="admin", readonly=True)
async def ListKeys(ctx: Context, req: ListKeysRequest) -> ListKeysResponse:
    """API keys (never their secrets)."""
    return ListKeysResponse(keys=await ctx.fleet.store.read(
        lambda c: auth.list_api_keys(c, req.include_revoked)))


class CreateKeyRequest(msgspec.Struct, kw_only=True):
    name: str
    role: str
    # Seconds until the key expires; 0 = never.
    expires_in: Seconds = 0


@service.method(auth="admin")
async def CreateKey(ctx: Context, req: CreateKeyRequest) -> ApiKey:
    """Create an API key; the answer's ``key`` holds the secret, shown this once."""
    if req.expires_in < 0:
        raise InvalidArgument("expires_in must be 0 (never) or a positive number of seconds")
    expires = now() + req.expires_in if req.expires_in else None
    return await ctx.fleet.store.write(
        lambda c: auth.create_api_key(c, ctx.actor, req.name, req.role, expires_at=expires))


class RevokeKeyRequest(msgspec.Struct, kw_only=True):
    # The key's id or its (unique) name.
    id: str


@service.method(auth="admin")
async def RevokeKey(ctx: Context, req: RevokeKeyRequest) -> ApiKey:
    """Revoke an API key; it stops working at once."""
    return await ctx.fleet.store.write(
        lambda c: auth.revoke_api_key(c, ctx.actor, req.id))
