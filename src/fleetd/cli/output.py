"""How the CLI prints: human tables by default, the API's JSON objects with --json."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
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


# Columns whose values are copied into the next command: never cut, never wrapped. Every other column folds
# (wraps, losing nothing) to make room, so at 80 columns a name wraps while the id beside it stays whole.
WHOLE = frozenset({"id", "device", "device_id", "action_id", "rollout_id", "artifact_id", "webhook_id", "incident_id",
                   "version", "kind", "state", "status"})


def data_table(columns: Sequence[str], *, whole: Collection[str] = WHOLE, **kwargs: Any) -> Table:
    """A table with a column per name ('_' shown as ' '); print it with :func:`print_fitted`."""
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), **kwargs)
    for c in columns:
        table.add_column(c.replace("_", " "), no_wrap=c in whole, overflow="fold")
    return table


def fitted(table: Table) -> Table:
    """Give each never-cut column its full width as a minimum, so shrinking to the terminal cannot cut it."""
    options = console.options
    for column in table.columns:
        if column.no_wrap:
            column.min_width = max((Measurement.get(console, options, cell).maximum for cell in column.cells),
                                   default=0)
    return table


def print_fitted(table: Table) -> None:
    console.print(fitted(table))


def print_table(rows: Sequence[Any], columns: Sequence[str], *, empty: str = "nothing to show",
                title: str | None = None) -> None:
    data = [to_builtins(r) for r in rows]
    if not data:
        console.print(f"[dim]{empty}[/dim]")
        return
    table = data_table(columns, title=title)
    for d in data:
        table.add_row(*(escape(_cell(d.get(c))) for c in columns))
    print_fitted(table)


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


def error(message: str, hint: str | None = None) -> None:
    """Print an error (red) and what to do about it (dim) to stderr."""
    err_console.print(f"[red]error:[/red] {escape(message)}")
    if hint:
        err_console.print(f"[dim]{escape(hint)}[/dim]")


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    error(message, hint)
    raise typer.Exit(code)
