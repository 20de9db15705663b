"""fleetd devices logs: an app's last log lines, which the device sends in the report of a logs action."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..devices.actions import LOG_LINES_DEFAULT, LOG_LINES_MAX, RESULTS_KEPT, TERMINAL
from .client import Client
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, errors_reported, remote
from .devices import ADMIN, DeviceArg, ago
from .output import err_console, fail, print_json

LinesOpt = Annotated[int, typer.Option("--lines", "-n", min=1, max=LOG_LINES_MAX,
                                       help=f"How many of the last lines (1..{LOG_LINES_MAX}).")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for the device to answer.")]
ActionOpt = Annotated[str, typer.Option(
    "--action", help="Print the lines of a logs action made before (e.g. one that timed out) instead of asking "
                     "again.", show_default=False)]
LogAppOpt = Annotated[str, typer.Option("--app", help="The app whose log to read.", show_default=False)]
FollowOpt = Annotated[bool, typer.Option(
    "--follow", "-f", help="Follow the log as it grows, through the device's remote-access channel (its agent must "
                           "have remote access on; docs/remote-access.md), until ^C.")]
POLL_EVERY = 1.0


def devices_logs(device: DeviceArg, app: LogAppOpt = "", lines: LinesOpt = LOG_LINES_DEFAULT,
                 action: ActionOpt = "", timeout: TimeoutOpt = 120.0, server: ServerOpt = None,
                 api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
                 follow: FollowOpt = False) -> None:
    """Print the last lines of an app's log on a device (at most 256 KiB); the device sends them when it next
    checks in, and the command waits for it. With --follow, the lines stream through the remote-access channel."""
    if not app and not action:
        fail("say which app: --app NAME", f"'fleetd devices show {device}' lists the apps the device reports")
    if follow and (action or json):
        fail("--follow streams the log as it grows: it takes neither --action nor --json")
    with errors_reported(), remote(server, api_key, ca) as client:
        dev = client.call(ADMIN, "GetDevice", {"id": device})
        if follow:
            from .remote_cmds import follow_logs

            follow_logs(client, dev, app, lines)
            return
        if action:
            a = client.call(ADMIN, "GetAction", {"id": action})
            if a["kind"] != "logs" or a["device_id"] != dev["id"]:
                fail(f"action {action} is a {a['kind']} action of device {a['device_id']}, not a logs action of "
                     f"{dev['name']}", f"'fleetd devices actions {device}' lists its actions")
        else:
            created = client.call(ADMIN, "CreateAction", {"device_ids": [dev["id"]], "kind": "logs",
                                                          "component": app, "params": {"lines": str(lines)}})
            a = client.call(ADMIN, "GetAction", {"id": created["action_ids"][0]})
        if a["state"] not in TERMINAL:
            err_console.print(f"[dim]{escape(_waiting(dev, a))}[/dim]")
            a = _wait(client, dev, a, timeout)
    if json:
        print_json(a)
    if a["state"] != "succeeded":
        fail(f"{dev['name']} did not send the log of {a['component']}: {a['message'] or a['state']} [{a['state']}]")
    result = a.get("result")
    if result is None:
        fail(f"the lines of action {a['id']} are no longer kept (the server keeps each device's newest "
             f"{RESULTS_KEPT})", f"ask again: fleetd devices logs {device} --app {a['component']}")
    if json:
        return
    sys.stdout.write(result["text"])
    sys.stdout.flush()
    note = f"{result['lines']} line(s) of {a['component']} on {dev['name']}"
    if result.get("truncated"):
        note += f" ({a['message']})"
    err_console.print(f"[dim]— {escape(note)}[/dim]")


def _waiting(dev: dict[str, Any], a: dict[str, Any]) -> str:
    when = f"at its next check-in (every {dev['poll_interval']} s)"
    if not dev.get("online"):
        when = f"when it checks in again: it is offline, last seen {ago(dev.get('last_seen'))}"
    return f"Asked {dev['name']} for the log of {a['component']} ({a['id']}); it sends it {when}. Waiting…"


def _wait(client: Client, dev: dict[str, Any], a: dict[str, Any], timeout: float) -> dict[str, Any]:
    later = f"fleetd devices logs {dev['name']} --action {a['id']}"
    deadline = time.monotonic() + timeout
    try:
        while a["state"] not in TERMINAL:
            if time.monotonic() >= deadline:
                fail(f"{dev['name']} has not sent the log within {timeout:g} s (the action is {a['state']})",
                     f"The device picks the action up at its next check-in (every {dev['poll_interval']} s); "
                     f"the action stays open. Later: {later}")
            time.sleep(POLL_EVERY)
            a = client.call(ADMIN, "GetAction", {"id": a["id"]})
    except KeyboardInterrupt:
        fail("stopped waiting", f"The action stays open; the device still sends the log. Later: {later}", code=130)
    return a
