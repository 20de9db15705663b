"""fleetd users|keys|audit: admin accounts, API keys and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from ..accounts import audit
from ..accounts import users as auth
from ..core.clock import now, parse_duration
from ..core.errors import InvalidArgument
from .common import (
    ApiKeyOpt,
    CaOpt,
    DataDirOpt,
    JsonOpt,
    ServerOpt,
    call,
    errors_reported,
    local_actor,
    offline,
    remote,
    use_offline,
)
from .output import console, print_json, print_table, show, to_builtins

ROLES_HELP = f"{', '.join(reversed(auth.Role))}."

users_app = typer.Typer(help="Admin users (work offline with --data-dir, or through --server).",
                        no_args_is_help=True)
keys_app = typer.Typer(help="API keys for scripts and the CLI (offline with --data-dir, or --server).",
                       no_args_is_help=True)

USER_COLUMNS = ["id", "username", "role", "disabled", "must_change_password", "created_at"]
KEY_COLUMNS = ["id", "name", "role", "created_by", "suspended", "created_at", "expires_at", "revoked_at"]


@users_app.command("list")
def users_list(server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
               data_dir: DataDirOpt = None, json: JsonOpt = False) -> None:
    """List admin users."""
    with errors_reported():
        if d := use_offline(server, data_dir):
            users = offline(d, auth.list_users)
        else:
            users = call(remote(server, api_key, ca), "UserService", "ListUsers")["users"]
    print_json(users) if json else print_table(users, USER_COLUMNS, empty="no users yet")


@users_app.command("create")
def users_create(
    username: str,
    role: Annotated[str, typer.Option(help=ROLES_HELP)] = "viewer",
    password: Annotated[str | None, typer.Option(help="Prompted for when not given.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Generate a password and print it once.")] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """Create a user."""
    if generate:
        password = auth.generate_password(username)
    elif password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with errors_reported():
        if d := use_offline(server, data_dir):
            user = offline(d, lambda c: auth.create_user(c, local_actor(), username, password, role,
                                                          must_change_password=generate))
        else:
            user = call(remote(server, api_key, ca), "UserService", "CreateUser",
                        {"username": username, "role": role, "password": password})["user"]
    show(user, json, USER_COLUMNS)
    if generate and not json:
        console.print(f"password (shown once): [bold]{password}[/bold]")


@users_app.command("passwd")
def users_passwd(
    username: str,
    password: Annotated[str | None, typer.Option(help="Prompted for when not given.")] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """Set a user's password (ends their sessions)."""
    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    with errors_reported():
        if d := use_offline(server, data_dir):
            user = offline(d, lambda c: auth.set_password(c, local_actor(), username, password))
        else:
            user = call(remote(server, api_key, ca), "UserService", "SetPassword",
                        {"username": username, "password": password})
    show(user, json, USER_COLUMNS)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. ci.")],
    role: Annotated[str, typer.Option("--role", help=ROLES_HELP)] = "viewer",
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d; default never.")] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """Create an API key; its secret is printed once."""
    with errors_reported():
        seconds = int(parse_duration(expires)) if expires else 0
        if d := use_offline(server, data_dir):
            key = offline(d, lambda c: auth.create_api_key(
                c, local_actor(), name, role, expires_at=now() + seconds if seconds else None))
        else:
            key = call(remote(server, api_key, ca), "UserService", "CreateKey",
                       {"name": name, "role": role, "expires_in": seconds})
    if json:
        print_json(key)
        return
    show(key, False, KEY_COLUMNS)
    secret = key["key"] if isinstance(key, dict) else key.key
    console.print(f"\nkey (shown once, store it now): [bold]{secret}[/bold]")
    console.print("[dim]use it: export FLEETD_API_KEY=<key>[/dim]")


@keys_app.command("list")
def keys_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """List API keys (never their secrets)."""
    with errors_reported():
        if d := use_offline(server, data_dir):
            keys = offline(d, lambda c: auth.list_api_keys(c, all_))
        else:
            keys = call(remote(server, api_key, ca), "UserService", "ListKeys", {"include_revoked": all_})["keys"]
    print_json(keys) if json else print_table(keys, KEY_COLUMNS, empty="no API keys")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id or name.")],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """Revoke an API key; it stops working at once, also on a running server."""
    with errors_reported():
        if d := use_offline(server, data_dir):
            key = offline(d, lambda c: auth.revoke_api_key(c, local_actor(), key_id))
        else:
            key = call(remote(server, api_key, ca), "UserService", "RevokeKey", {"id": key_id})
    show(key, json, KEY_COLUMNS)


def _since(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(text))
    except InvalidArgument:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"--since takes a duration (1h, 7d) or an ISO time, got {text!r}") from None
    return t if t.tzinfo else t.astimezone()


AUDIT_COLUMNS = ["id", "ts", "actor_kind", "actor_name", "action", "target", "devices", "outcome", "remote_addr"]


def audit_command(
    action: Annotated[str, typer.Option(
        "--type", "--action", help="Entry type or its beginning, e.g. artifact.create or device.; several, "
        "comma-separated: artifact.,token.,key.")] = "",
    actor: Annotated[str, typer.Option(help="Actor: a user or API key name, a device, or fleetd (or an id).")] = "",
    target: Annotated[str, typer.Option(help="Target id.")] = "",
    outcome: Annotated[str, typer.Option(help="ok, denied or failed.")] = "",
    since: Annotated[str | None, typer.Option(help="A duration (24h) or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many entries (1-1000).")] = 50,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
    data_dir: DataDirOpt = None, json: JsonOpt = False,
) -> None:
    """Show the audit log, newest first."""
    with errors_reported():
        since_dt = _since(since)
        if d := use_offline(server, data_dir):
            entries = offline(d, lambda c: audit.query(
                c, action=action or None, actor=actor or None, target=target or None, outcome=outcome or None,
                since=since_dt.timestamp() if since_dt else None, limit=limit))
        else:
            body = {"action": action, "actor": actor, "target": target, "outcome": outcome, "limit": limit}
            if since_dt:
                body["since"] = since_dt.isoformat()
            entries = call(remote(server, api_key, ca), "AuditService", "List", body)["entries"]
    if json:
        print_json(entries)
        return
    # A deploy to many devices is one entry: show how many, --json lists the first devices and actions.
    rows = [{**d, "devices": d["details"].get("count", "")} for d in map(to_builtins, entries)]
    print_table(rows, AUDIT_COLUMNS, empty="no audit entries match")
