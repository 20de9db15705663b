"""How the CLI prints: human tables by default, the API's JSON objects with --json."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def print_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(to_builtins(obj)), indent=2).decode() + "\n")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str) and len(v) >= 20 and v[4:5] == "-" and "T" in v:
        try:
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone()
            return t.strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return v
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "-"
    return str(v)


def print_table(rows: Sequence[Any], columns: Sequence[str], *, empty: str = "nothing to show",
                title: str | None = None) -> None:
    data = [to_builtins(r) for r in rows]
    if not data:
        console.print(f"[dim]{empty}[/dim]")
        return
    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c.replace("_", " "))
    for d in data:
        table.add_row(*(_cell(d.get(c)) for c in columns))
    console.print(table)


def print_object(obj: Any, fields: Sequence[str] | None = None) -> None:
    d = to_builtins(obj)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for k in fields or d.keys():
        table.add_row(k.replace("_", " "), _cell(d.get(k)))
    console.print(table)


def show(obj: Any, as_json: bool, fields: Sequence[str] | None = None) -> None:
    if as_json:
        print_json(obj)
    else:
        print_object(obj, fields)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    if hint:
        err_console.print(f"[dim]{escape(hint)}[/dim]")
    raise typer.Exit(code)
