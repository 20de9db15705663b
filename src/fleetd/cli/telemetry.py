"""fleetd telemetry: query what devices report (through --server)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from ..core.clock import parse_duration
from ..core.errors import InvalidArgument
from ..devices.tags import parse_tag_args
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .devices import hinted
from .output import console, print_json

telemetry_app = typer.Typer(help="Telemetry: query the metrics devices report (through --server).",
                            no_args_is_help=True)

BARS = " ▁▂▃▄▅▆▇█"
RESOLUTION = {"raw": "raw points", "minute": "minute rollups", "hour": "hour rollups"}


def parse_when(text: str, now: float) -> float:
    """'2025-06-01T12:00', '2025-06-01 12:00+02:00' (local time without a zone) or a duration ago ('2h')."""
    try:
        return now - parse_duration(text)
    except InvalidArgument:
        pass
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"cannot read time {text!r}; write e.g. 2h (ago) or 2025-06-01T12:00") from None
    return (t if t.tzinfo else t.astimezone()).timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def query_body(args: list[str], tag: list[str] | None, device_type: str | None, since: str, until: str | None,
               max_points: int, now: float) -> dict[str, Any]:
    tags = parse_tag_args(tag or [])
    selecting = bool(tags or device_type)
    if len(args) != (1 if selecting else 2):
        raise InvalidArgument("give a device and a metric (fleetd telemetry query DEVICE METRIC), or --tag "
                              "key=value and a metric (fleetd telemetry query --tag site=lab METRIC)")
    end = parse_when(until, now) if until else now
    start = parse_when(since, end)
    if start >= end:
        raise InvalidArgument(f"--since must be before --until (got {_iso(start)} and {_iso(end)})")
    return {"device": "" if selecting else args[0], "tags": tags, "device_type": device_type or "",
            "metric": args[-1], "start": _iso(start), "end": _iso(end), "max_points": max_points}


def _bar(value: float, lo: float, hi: float) -> str:
    if hi <= lo:
        return BARS[4]
    return BARS[1 + round((value - lo) / (hi - lo) * (len(BARS) - 2))]


def print_series(answer: dict[str, Any], who: str) -> None:
    points = answer["points"]
    width = answer["bucket_seconds"]
    console.print(f"[bold]{answer['metric']}[/bold] on {who} · {RESOLUTION.get(answer['resolution'], '?')} · "
                  f"buckets of {width:g} s · {answer['device_count']} device(s)")
    if not points:
        console.print("[dim]no data in this range[/dim]")
        return
    lo, hi = min(p["min"] for p in points), max(p["max"] for p in points)
    table = Table(header_style="bold", box=None)
    for col in ("time", "avg", "min", "max", "count", ""):
        table.add_column(col, justify="left" if col in ("time", "") else "right")
    fmt = "%Y-%m-%d %H:%M:%S" if width < 60 else "%Y-%m-%d %H:%M"
    for p in points:
        when = dt.datetime.fromtimestamp(p["ts"]).strftime(fmt)
        table.add_row(when, f"{p['avg']:.6g}", f"{p['min']:.6g}", f"{p['max']:.6g}", str(p["count"]),
                      _bar(p["avg"], lo, hi))
    console.print(table)


@telemetry_app.command("query")
def telemetry_query(
    args: Annotated[list[str], typer.Argument(metavar="[DEVICE] METRIC", show_default=False,
                                              help="A device (id, hardware id or name) and a metric; with --tag "
                                                   "only the metric.")],
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Merge every device with this key=value (repeat: all must match).", show_default=False)] = None,
    device_type: Annotated[str | None, typer.Option("--device-type", help="With --tag (or alone): only devices "
                                                    "of this type.", show_default=False)] = None,
    since: Annotated[str, typer.Option(help="Start: a duration before --until (90m, 24h, 7d) or a time.")] = "1h",
    until: Annotated[str | None, typer.Option(help="End: a time or a duration ago; default now.",
                                              show_default=False)] = None,
    max_points: Annotated[int, typer.Option("--max-points", help="At most this many buckets (1-10000).")] = 60,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """A metric over time, downsampled: avg, min, max and count per bucket.

    Short recent ranges come from the raw points, longer ones from per-minute or per-hour rollups.
    """
    with errors_reported(), hinted("'fleetd devices list' shows the devices"):
        body = query_body(args, tag, device_type, since, until, max_points, time.time())
        answer = call(remote(server, api_key, ca), "TelemetryService", "Query", body)
    if json:
        print_json(answer)
        return
    who = body["device"] or ", ".join([f"{k}={v}" for k, v in body["tags"].items()] +
                                      ([f"type {device_type}"] if device_type else []))
    print_series(answer, who)
