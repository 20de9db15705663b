"""Options and helpers shared by CLI commands."""

from __future__ import annotations

import getpass
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer

from ..accounts.audit import Actor
from ..core.config import load_settings
from ..core.errors import FleetdError
from ..fleet import open_offline
from ..store.database import transaction
from .client import DEFAULT_SERVER, Client, resolve_ca
from .output import fail

T = TypeVar("T")

ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="FLEETD_SERVER", help="Server URL, e.g. https://fleet.local:8420.", show_default=False)]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="FLEETD_API_KEY", help="API key (fk_...).", show_default=False)]
CaOpt = Annotated[str | None, typer.Option(
    "--ca", help="Fleet CA to trust (env FLEETD_CA; default: the data dir's ca.pem).", show_default=False)]
DataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", help="Work offline on this data dir instead of through a server.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON objects.")]


def local_actor() -> Actor:
    try:
        who = getpass.getuser()
    except Exception:
        who = "unknown"
    return Actor("local", None, f"{who}@cli")


def default_data_dir() -> str:
    return os.environ.get("FLEETD_DATA_DIR") or "./fleetd-data"


_HINTS = {
    "unauthenticated": "Pass an API key with --api-key or FLEETD_API_KEY (create one: fleetd keys create).",
    "permission_denied": "Use a key with a stronger role (viewer < operator < admin).",
}


@contextmanager
def errors_reported() -> Iterator[None]:
    """Turn fleetd errors into one red line and exit code 1."""
    try:
        yield
    except FleetdError as e:
        code = getattr(e, "code", "")
        hint = getattr(e, "hint", None) or _HINTS.get(code)
        fail(f"{e.message} [{code}]", hint)


@contextmanager
def phase_progress(enabled: bool, labels: dict[str, str], *, in_bytes: bool = True
                   ) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar per phase on stderr when it is a terminal, else None: ``update(phase, done, total)``
    (bytes, or counts with ``in_bytes=False``); ``labels`` names the phases."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from .output import err_console
    if not enabled or not err_console.is_terminal:
        yield None
        return
    amount = DownloadColumn() if in_bytes else TextColumn("{task.completed:,}/{task.total:,}")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), amount, TimeRemainingColumn(),
                   console=err_console, transient=True)
    tasks: dict[str, TaskID] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        yield update


def remote(server: str | None, api_key: str | None, ca: str | None, data_dir: str | None = None) -> Client:
    return Client(server or DEFAULT_SERVER, api_key, resolve_ca(ca, data_dir))


def offline(data_dir: str, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in one write transaction on the fleet's store (works beside a running server): the data dir's
    SQLite file, or the PostgreSQL database its settings name (``database`` in DATA_DIR/fleetd.toml, or
    FLEETD_DATABASE)."""
    conn = open_offline(data_dir, load_settings({"data_dir": data_dir}).database)
    try:
        with transaction(conn):
            return fn(conn)
    finally:
        conn.close()


def use_offline(server: str | None, data_dir: str | None) -> str | None:
    """The data dir to work on offline, or None to go through the server.

    An explicit --data-dir wins; else a --server (or FLEETD_SERVER) means remote;
    else the default data dir, offline.
    """
    if data_dir:
        return data_dir
    if server:
        return None
    return default_data_dir()


def call(client: Client, service: str, method: str, body: dict[str, Any] | None = None) -> Any:
    with client:
        return client.call(service, method, body)
