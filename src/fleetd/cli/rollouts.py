"""fleetd rollouts: create staged rollouts, follow them, pause, resume, promote, cancel, roll back."""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..core.clock import parse_duration
from ..devices.tags import parse_tag_args
from ..rollouts.rules import parse_percent, parse_stages
from ..rollouts.states import ENDED, RolloutState
from .client import Client
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .devices import ago, parse_time
from .output import console, data_table, fail, print_fitted, print_json, print_object

rollouts_app = typer.Typer(help="Staged rollouts with automatic rollback (through --server).", no_args_is_help=True)

SERVICE = "RolloutService"
_S = RolloutState
STATE_STYLE: dict[str, str] = {_S.SCHEDULED: "cyan", _S.RUNNING: "blue", _S.PAUSED: "yellow", _S.COMPLETED: "green",
                               _S.ROLLED_BACK: "red", _S.CANCELLED: "yellow"}
SHOW_FIELDS = ["id", "artifact", "state", "reason", "waiting_for", "target", "max_failure_percent", "soak_seconds",
               "offline_timeout_seconds", "start_at", "window", "health", "consent", "created_by", "created_at",
               "started_at", "finished_at"]

RolloutArg = Annotated[str, typer.Argument(help="The rollout's id (fleetd rollouts list).", show_default=False)]


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{escape(state)}[/]"


def _stage_label(r: dict[str, Any]) -> str:
    n = len(r["stages"])
    if r["stage"] < 0:
        return f"-/{n}"
    return f"{r['stage'] + 1}/{n} ({r['stages'][r['stage']]['percent']:g}%)"


def _target(t: dict[str, Any]) -> str:
    parts = []
    if t.get("device_types"):
        tags = ", ".join(f"{k}={v}" for k, v in sorted((t.get("tags") or {}).items()))
        parts.append("/".join(t["device_types"]) + (f" with {tags}" if tags else ""))
    if t.get("device_ids"):
        parts.append(f"{len(t['device_ids'])} listed device(s)")
    return " + ".join(parts) or "-"


def stage_table(r: dict[str, Any], caption: str | None = None) -> Table:
    table = Table(header_style="bold", caption=caption)
    for c in ("stage", "state", "progress", "done", "queued", "installing", "soaking", "succeeded", "failed",
              "skipped"):
        table.add_column(c, justify="right" if c not in ("stage", "state", "progress") else "left")
    for s in r["stages"]:
        targeted = s["targeted"]
        done = s["succeeded"] + s["failed"] + s["skipped"]
        style = "red" if s["failed"] else "green"
        bar = ProgressBar(total=max(targeted, 1), completed=done if targeted else 0, width=30,
                          complete_style=style, finished_style=style)
        table.add_row(f"{s['index'] + 1} · {s['percent']:g}%", escape(s["state"]), bar, f"{done}/{targeted}",
                      str(s["queued"]), str(s["in_progress"]), str(s["soaking"]), f"[green]{s['succeeded']}[/]",
                      f"[red]{s['failed']}[/]" if s["failed"] else "0", str(s["skipped"]))
    return table


def _header(r: dict[str, Any]) -> Text:
    text = Text.from_markup(f"[bold]{escape(r['id'])}[/bold]  {escape(r['artifact'])} → {escape(_target(r['target']))}"
                            f"  {_state(r['state'])}  stage {_stage_label(r)}")
    if r.get("waiting_for"):
        text.append(f"\nwaiting for {r['waiting_for']}", style="dim")
    soak_left = _soak_left(r)
    if soak_left is not None:
        text.append(f"\nsoak ends in {soak_left}", style="cyan")
    if r.get("reason"):
        text.append(f"\n{r['reason']}", style="red" if r["state"] == "rolled_back" else "yellow")
    rb = r.get("rollback") or {}
    if rb.get("actions"):
        text.append(f"\nrollback actions: {rb['actions']} ({rb['succeeded']} succeeded, {rb['failed']} failed, "
                    f"{rb['open']} open)", style="magenta")
    return text


def _soak_left(r: dict[str, Any]) -> str | None:
    """The soak countdown ('4m 05s') while devices soak; None when none does."""
    end = parse_time(r.get("soak_ends_at")) if r["state"] not in ENDED else None
    if end is None:
        return None
    left = max(0, int((end - dt.datetime.now(dt.UTC)).total_seconds()))
    return f"{left // 60}m {left % 60:02d}s" if left >= 60 else f"{left}s"


def status_line(r: dict[str, Any]) -> str:
    """The rollout in one line (state, stage, device counts), for a log: what `watch` prints without a terminal."""
    total = {k: sum(s[k] for s in r["stages"]) for k in ("targeted", "succeeded", "failed", "skipped", "queued",
                                                         "in_progress", "soaking")}
    line = (f"{r['id']} {r['state']} stage {_stage_label(r)}: {total['succeeded']} succeeded, {total['failed']} "
            f"failed, {total['skipped']} skipped, {total['queued'] + total['in_progress']} installing, "
            f"{total['soaking']} soaking of {total['targeted']}")
    if r.get("waiting_for"):
        line += f"; waiting for {r['waiting_for']}"
    if r.get("reason"):
        line += f"; {r['reason']}"
    return line


def view(r: dict[str, Any], caption: str | None = None) -> RenderableType:
    return Group(_header(r), stage_table(r, caption))


# --- commands ----------------------------------------------------------------------------

@rollouts_app.command("create")
def rollouts_create(
    artifact: Annotated[str, typer.Option("--artifact", help="NAME@VERSION (or the artifact's id).",
                                          show_default=False)],
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="key=value: devices with this tag (repeat: all must match).", show_default=False)] = None,
    device_type: Annotated[list[str] | None, typer.Option(
        "--device-type", help="Only devices of this type (default: the artifact's types and patterns).",
        show_default=False)] = None,
    device: Annotated[list[str] | None, typer.Option(
        "--device", help="This device too (id or its unique start, hardware id or name; repeat).",
        show_default=False)] = None,
    stages: Annotated[str, typer.Option(help="Cumulative percentages, the last 100.")] = "5,25,100",
    max_failure: Annotated[str, typer.Option(
        "--max-failure", help="Halt and roll back when more than this share of the attempted devices fail.")] = "5%",
    soak: Annotated[str, typer.Option(help="How long installed devices must stay healthy before the next stage.")
                    ] = "10m",
    offline_timeout: Annotated[str, typer.Option(
        "--offline-timeout", help="A device offline (or without progress) this long is skipped.")] = "30m",
    start_at: Annotated[str, typer.Option(
        "--start-at", help="Start later: '2025-03-01 02:00' (server local time), with an offset or zone name, or "
                           "+2h.", show_default=False)] = "",
    window: Annotated[str, typer.Option(
        help="Maintenance window for new installs, e.g. 'Mon-Fri 01:00-05:00' (server local time unless a zone "
             "such as Europe/Berlin follows).", show_default=False)] = "",
    health: Annotated[str, typer.Option(
        help="Telemetry condition devices must meet while soaking, e.g. 'cpu_temp<80'.", show_default=False)] = "",
    consent: Annotated[bool, typer.Option("--consent", help="Offer the update; devices install once they accept.")
                       ] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Roll an artifact out in stages; it halts and rolls back by itself when too many devices fail.

    fleetd rollouts create --artifact app@1.2.0 --target site=home --stages 10,50,100 --soak 30m
    """
    with errors_reported():
        body = {"artifact": artifact, "tags": parse_tag_args(target or []), "device_types": list(device_type or []),
                "device_ids": list(device or []), "stages": parse_stages(stages),
                "max_failure_percent": parse_percent(max_failure), "soak_seconds": parse_duration(soak),
                "offline_timeout_seconds": parse_duration(offline_timeout), "start_at": start_at, "window": window,
                "health": health, "consent": consent}
        r = call(remote(server, api_key, ca), SERVICE, "CreateRollout", body)
    if json:
        print_json(r)
        return
    total = sum(s["targeted"] for s in r["stages"])
    console.print(f"[green]created[/green] rollout {escape(r['id'])}: {escape(r['artifact'])} to {total} device(s) "
                  f"in {len(r['stages'])} stage(s):")
    for s in r["stages"]:
        console.print(f"  stage {s['index'] + 1} (up to {s['percent']:g}%): {s['targeted']} device(s)")
    console.print("[dim]Each device's stage comes from a hash of its id, so a stage holds about its share of the "
                  "devices, not exactly.[/dim]")
    console.print(f"[dim]Follow it: fleetd rollouts watch {escape(r['id'])}[/dim]")


@rollouts_app.command("list")
def rollouts_list(
    state: Annotated[str, typer.Option(help="Only rollouts in this state.", show_default=False)] = "",
    limit: Annotated[int, typer.Option(help="The newest this many (1-1000).")] = 100,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Rollouts, newest first."""
    with errors_reported():
        found = call(remote(server, api_key, ca), SERVICE, "ListRollouts", {"state": state, "limit": limit})["rollouts"]
    if json:
        print_json(found)
        return
    if not found:
        console.print("[dim]no rollouts yet: fleetd rollouts create --artifact NAME@VERSION --target k=v[/dim]")
        return
    table = data_table(("id", "artifact", "target", "state", "stage", "created", "reason"))
    for r in found:
        table.add_row(escape(r["id"]), escape(r["artifact"]), escape(_target(r["target"])), _state(r["state"]),
                      _stage_label(r), ago(r.get("created_at")), escape(r.get("reason") or ""))
    print_fitted(table)


@rollouts_app.command("show")
def rollouts_show(rollout: RolloutArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                  json: JsonOpt = False) -> None:
    """A rollout: settings, state, per-stage device counts, and why it halted."""
    with errors_reported(), remote(server, api_key, ca) as client:
        r = client.call(SERVICE, "GetRollout", {"id": rollout})
        failed: dict[str, Any] = {} if json else client.call(
            SERVICE, "ListRolloutDevices", {"id": rollout, "status": "failed", "limit": 10})
    if json:
        print_json(r)
        return
    print_object({**r, "target": _target(r["target"]), "state": r["state"]}, SHOW_FIELDS)
    console.print()
    console.print(stage_table(r))
    if failed and failed["total"]:
        console.print(f"\n[bold]failed devices[/bold] ({failed['total']})")
        for d in failed["devices"]:
            console.print(f"  {escape(d['device_id'])}  [dim]stage {d['stage'] + 1}[/dim]  {escape(d['detail'])}")


@rollouts_app.command("devices")
def rollouts_devices(
    rollout: RolloutArg,
    status: Annotated[str, typer.Option(help="pending, queued, in_progress, soaking, succeeded, failed or skipped.",
                                        show_default=False)] = "",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 1000,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Each device's stage and status in a rollout, and why it failed or was skipped."""
    with errors_reported():
        got = call(remote(server, api_key, ca), SERVICE, "ListRolloutDevices",
                   {"id": rollout, "status": status, "limit": limit})
    if json:
        print_json(got["devices"])
        return
    table = data_table(("device", "stage", "status", "detail"))
    for d in got["devices"]:
        table.add_row(escape(d["device_id"]), str(d["stage"] + 1), escape(d["status"]), escape(d["detail"]))
    print_fitted(table)
    if got["total"] > len(got["devices"]):
        console.print(f"[dim]showing {len(got['devices'])} of {got['total']}; raise --limit or filter by "
                      "--status[/dim]")


def _transition(method: str, rollout: str, server: str | None, api_key: str | None, ca: str | None, json: bool,
                body: dict[str, Any] | None = None) -> None:
    with errors_reported():
        r = call(remote(server, api_key, ca), SERVICE, method, {"id": rollout, **(body or {})})
    if json:
        print_json(r)
        return
    console.print(_header(r))


@rollouts_app.command("pause")
def rollouts_pause(rollout: RolloutArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                   json: JsonOpt = False) -> None:
    """Hold a rollout: no new stage, no new installs (a failure past the threshold still rolls it back)."""
    _transition("PauseRollout", rollout, server, api_key, ca, json)


@rollouts_app.command("resume")
def rollouts_resume(rollout: RolloutArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                    json: JsonOpt = False) -> None:
    """Let a paused rollout go on."""
    _transition("ResumeRollout", rollout, server, api_key, ca, json)


@rollouts_app.command("cancel")
def rollouts_cancel(rollout: RolloutArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                    json: JsonOpt = False) -> None:
    """Stop a rollout; unfinished installs are cancelled, installed devices keep the new version."""
    _transition("CancelRollout", rollout, server, api_key, ca, json)


@rollouts_app.command("promote")
def rollouts_promote(rollout: RolloutArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                     json: JsonOpt = False) -> None:
    """Start the next stage now, without waiting for the soak, start time or window."""
    _transition("PromoteRollout", rollout, server, api_key, ca, json)


@rollouts_app.command("rollback")
def rollouts_rollback(
    rollout: RolloutArg,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.", show_default=False)] = "",
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Roll back by hand: every device running the new version goes back to its previous one."""
    _transition("RollbackRollout", rollout, server, api_key, ca, json, {"reason": reason})


def _watch_lines(client: Client, rollout: str, interval: float) -> dict[str, Any]:
    """Without a terminal: a timestamped line whenever the state, stage or counts change."""
    r = client.call(SERVICE, "GetRollout", {"id": rollout})
    last = ""
    while True:
        line = status_line(r)
        if line != last:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            sys.stdout.flush()
            last = line
        if r["state"] in ENDED:
            return r
        time.sleep(interval)
        r = client.call(SERVICE, "GetRollout", {"id": rollout})


def _watch(client: Client, rollout: str, interval: float) -> dict[str, Any]:
    if not console.is_terminal:
        return _watch_lines(client, rollout, interval)
    r = client.call(SERVICE, "GetRollout", {"id": rollout})
    caption = f"refreshing every {interval:g}s until the rollout ends; Ctrl-C stops watching"
    with Live(view(r, caption), console=console, auto_refresh=False) as live:
        try:
            while r["state"] not in ENDED:
                time.sleep(interval)
                r = client.call(SERVICE, "GetRollout", {"id": rollout})
                live.update(view(r, caption), refresh=True)
            live.update(view(r, f"the rollout {r['state'].replace('_', ' ')}"), refresh=True)
        except KeyboardInterrupt:
            live.update(view(r, "stopped watching"), refresh=True)
    return r


@rollouts_app.command("watch")
def rollouts_watch(
    rollout: RolloutArg,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 2.0,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Live progress bars per stage and the soak countdown until the rollout ends; without a terminal, one line
    per change (with --json: wait, then print it). Exits 0 when it completed, 1 when it was rolled back or
    cancelled."""
    with errors_reported(), remote(server, api_key, ca) as client:
        if json:
            r = client.call(SERVICE, "GetRollout", {"id": rollout})
            while r["state"] not in ENDED:
                time.sleep(interval)
                r = client.call(SERVICE, "GetRollout", {"id": rollout})
            print_json(r)
        else:
            r = _watch(client, rollout, interval)
    if r["state"] in ENDED and r["state"] != "completed":
        fail(f"rollout {r['id']} {r['state'].replace('_', ' ')}: {r.get('reason') or 'no reason given'}")
