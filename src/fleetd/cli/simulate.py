"""fleetd simulate: many simulated devices against a server, for demos, load and end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from ..core.errors import InvalidArgument
from .client import DEFAULT_SERVER
from .common import JsonOpt, ServerOpt, errors_reported
from .output import console, fail, print_json, print_object

if TYPE_CHECKING:  # the simulator and its HTTP client load only when simulating, not in `fleetd serve`
    from .sim_engine import SimOptions, SimState
    from .sim_workers import Totals


async def _trusted_ca(server: str, token: str, ca: str | None, state: SimState) -> str | None:
    """The fleet CA to pin: --ca/$FLEETD_CA, else the state file's, else fetched and checked against the token."""
    from .devclient import fetch_pinned_ca, join_token_ca_fingerprint

    if not server.startswith("https://"):
        return None
    path = ca or os.environ.get("FLEETD_CA")
    if path:
        try:
            pem = Path(path).expanduser().read_text()
        except OSError as e:
            raise InvalidArgument(f"cannot read the CA file {path}: {e.strerror}") from None
    elif state.ca_pem:
        pem = state.ca_pem
    elif token:
        pem = await fetch_pinned_ca(server, join_token_ca_fingerprint(token))
    else:
        raise InvalidArgument("nothing to trust the server by: give --ca FILE (the fleet's ca.pem) or a join "
                              "token (--token), which pins the fleet CA")
    if pem != state.ca_pem:
        state.ca_pem, state.dirty = pem, True
    return pem


def _enrolled(t: Totals) -> str:
    """'3,000/10,000', and how the server's enrollment limit paces it."""
    c = t.counts()
    text = f"{c['enrolled']:,}/{t.opts.devices:,}"
    p = t.pacing()["enrollment"]
    if p["throttled"] and c["enrolled"] < t.opts.devices:
        text += (f", paced to {p['limit_per_minute']:,}/min by the server's limit" if p["limit_per_minute"]
                 else ", held back by the server's limit")
        if p["waiting_seconds"]:
            text += f" (next in {p['waiting_seconds']:.0f} s)"
    return text


def _rates(t: Totals) -> str:
    asked, rate = t.asked(), t.rate()
    text = f"{rate:,.1f} of {asked:,.1f} asked"
    if asked:
        text += f" ({100 * rate / asked:.0f} %)"
    return text


def _cpu(t: Totals) -> str:
    from .sim_workers import cores
    return f"{t.cpu_percent():.0f} % of a core ({t.workers} worker{'s' if t.workers > 1 else ''}, {cores()} cores)"


def _live_table(t: Totals) -> Table:
    c = t.counts()
    table = Table(title=f"fleetd simulate → {t.opts.server}", show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("enrolled", _enrolled(t))
    table.add_row("active · pending", f"{c['active']:,} · {c['pending']:,}" + (
        f" · revoked {c['revoked']:,}" if c["revoked"] else ""))
    table.add_row("check-ins/s", f"{_rates(t)}, {int(t.total('check_ins')):,} in all")
    late = int(t.total("late_check_ins"))
    if late:
        table.add_row("late check-ins", f"[yellow]{late:,}[/yellow] (up to {t.total('max_lateness'):.1f} s after "
                      "their slot: the simulator is behind)")
    table.add_row("simulator CPU", _cpu(t))
    if t.opts.mqtt:
        table.add_row("on the MQTT broker", _on_broker(t))
    table.add_row("telemetry points", f"{int(t.total('telemetry_points')):,}")
    table.add_row("actions done · failed", f"{int(t.total('actions_succeeded'))} · {int(t.total('actions_failed'))}")
    table.add_row("errors", f"[red]{t.errors}[/red]" if t.errors else "0")
    if t.total("throttled"):
        table.add_row("paced (429, not errors)", str(int(t.total("throttled"))))
    if t.last_error:
        table.add_row("last error", f"[dim]{t.last_error[:150]}[/dim]")
    return table


def _on_broker(t: Totals) -> str:
    c, m = t.counts(), t.mqtt()
    text = f"{c['on_mqtt']:,} devices, {int(t.total('actions_over_mqtt')):,} actions came that way"
    if m["delivery_median_ms"] is not None:
        text += (f"; actions reached devices {m['delivery_median_ms']:,.0f} ms after they were made (median), "
                 f"p99 {m['delivery_p99_ms']:,.0f} ms")
    return text


STATUS_EVERY = 10.0


class StatusLines:
    """Without a terminal: one status line whenever the counts change, and every STATUS_EVERY seconds."""

    def __init__(self, totals: Totals) -> None:
        self.t = totals
        self.last: tuple[Any, ...] = ()
        self.at = 0.0

    def __call__(self) -> None:
        t = self.t
        c = t.counts()
        key = (*c.values(), *(t.total(k) for k in ("actions_succeeded", "actions_failed", "throttled")), t.errors)
        now = time.monotonic()
        if key == self.last and now - self.at < STATUS_EVERY:
            return
        self.last, self.at = key, now
        line = (f"{time.strftime('%H:%M:%S')} enrolled {_enrolled(t)}, active {c['active']:,}, "
                f"pending {c['pending']:,}{', revoked ' + str(c['revoked']) if c['revoked'] else ''}; "
                f"check-ins/s {_rates(t)} ({int(t.total('check_ins')):,} in all); simulator CPU {_cpu(t)}; "
                f"actions {int(t.total('actions_succeeded'))} done, {int(t.total('actions_failed'))} failed; "
                f"errors {t.errors}{f' (last: {t.last_error[:150]})' if t.errors else ''}"
                + (f"; on the MQTT broker {_on_broker(t)}" if t.opts.mqtt else ""))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _paced(p: dict[str, Any]) -> str:
    if not p["throttled"]:
        return "not limited"
    text = (f"paced to {p['limit_per_minute']:,}/min by the server's limit" if p["limit_per_minute"]
            else "held back by the server's limit")
    return text + f"; {p['throttled']} answered 429, waited out (not errors)"


def _human(s: dict[str, Any]) -> dict[str, Any]:
    """The summary for people: the same numbers as --json, in sentences."""
    steady = (f"{s['steady_check_ins_per_second']:,.1f} = {s['steady_percent_of_asked']} % of asked, over the "
              f"last {s['steady_seconds']:.0f} s" if s["steady_check_ins_per_second"] is not None
              else "not reached (one interval after every device has checked in)")
    out = {k: s[k] for k in ("devices", "enrolled", "active", "pending", "revoked")}
    out.update({
        "check-ins": f"{s['check_ins']:,} ({s['check_ins_per_second']:,.1f}/s over the whole run)",
        "check-ins/s asked": f"{s['asked_check_ins_per_second']:,.1f}",
        "check-ins/s reached": steady,
        "late check-ins": f"{s['late_check_ins']:,} (at most {s['max_lateness_seconds']} s after their slot)",
        "mean check-in": f"{s['mean_check_in_ms']} ms" if s["mean_check_in_ms"] is not None else "-",
        "telemetry points": f"{s['telemetry_points']:,}",
        "actions succeeded": s["actions_succeeded"], "actions failed": s["actions_failed"],
        "errors": s["errors"],
    })
    for i, (reason, n) in enumerate(s["errors_by_reason"].items(), 1):
        out[f"  reason {i}"] = f"{n:,} times: {reason}"
    out["throttled"] = s["throttled"]
    out.update({what: _paced(p) for what, p in s["pacing"].items()})
    if s["mqtt"] is not None:
        m = s["mqtt"]
        out["on the MQTT broker"] = (f"{m['devices_connected']:,} devices connected ({m['connections']:,} connections "
                                     f"made), {m['actions_over_mqtt']:,} actions came that way")
        out["action delivery"] = (
            f"median {m['delivery_median_ms']:,} ms, p99 {m['delivery_p99_ms']:,} ms, max {m['delivery_max_ms']:,} "
            f"ms from an action's creation to its device having it ({m['actions_received']:,} actions)"
            if m["actions_received"] else "no actions")
    workers = f"{s['workers']} worker{'s' if s['workers'] > 1 else ''}"
    out["simulator CPU"] = (f"{s['simulator_cpu_percent']} % of a core on average ({workers}, "
                            f"{s['connections']} connections made, {s['cores']} cores)")
    out["seconds"] = s["seconds"]
    return out


async def _supervise(opts: SimOptions, state: SimState, ca_pem: str | None, live: bool, lines: bool
                     ) -> dict[str, Any]:
    from .sim_workers import Supervisor

    sup = Supervisor(opts, state, ca_pem)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sup.stop.set)
    try:
        display = (Live(_live_table(sup.totals), console=console, refresh_per_second=4, transient=True) if live
                   else nullcontext())
        status = StatusLines(sup.totals) if lines else None
        with display as shown:
            def tick() -> None:
                if shown is not None:
                    shown.update(_live_table(sup.totals))
                elif status is not None:
                    status()
            return await sup.run(tick)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def simulate(
    server: ServerOpt = None,
    token: Annotated[str, typer.Option(
        "--token", envvar="FLEETD_JOIN_TOKEN",
        help="Join token (fleetd tokens create); without one devices enroll as pending and wait to be "
             "claimed.")] = "",
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many devices to simulate.")] = 10,
    interval: Annotated[float | None, typer.Option(
        help="Seconds between check-ins, each device at its own slot so they spread evenly (default: the "
             "interval the server asks for).",
        show_default=False)] = None,
    fail_rate: Annotated[float, typer.Option(
        "--fail-rate", help="Probability 0..1 that an install fails on purpose.")] = 0.0,
    duration: Annotated[float, typer.Option(help="Seconds to run; 0 = until Ctrl-C.")] = 0.0,
    ca: Annotated[str | None, typer.Option(
        "--ca", help="Fleet CA to trust (env FLEETD_CA; default: fetched from the server and checked "
                     "against the join token's CA fingerprint).", show_default=False)] = None,
    prefix: Annotated[str, typer.Option(help="Hardware ids are PREFIX-1 … PREFIX-N.")] = "sim",
    state: Annotated[str | None, typer.Option(
        "--state", help="JSON file keeping the devices' keys and ids (0600), so a second run resumes the same "
                        "devices instead of enrolling new ones.", show_default=False)] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="Processes to run the devices in (default: one per CPU core, fewer for a small "
                          "fleet).", show_default=False)] = 0,
    mqtt: Annotated[bool, typer.Option(
        "--mqtt", help="Put the devices on the server's MQTT broker once it names one: each gets its client "
                       "certificate and connects with it (one connection per device), checks in, reports and sends "
                       "telemetry through it and takes actions the moment they are made (docs/mqtt.md).")] = False,
    json: JsonOpt = False,
) -> None:
    """Simulate N devices (type 'sim'): enroll, check in, send telemetry, install updates."""
    from .sim_engine import SimOptions, SimState

    server_url = (server or DEFAULT_SERVER).rstrip("/")
    with errors_reported():
        opts = SimOptions(server=server_url, token=token, devices=devices, interval=interval, fail_rate=fail_rate,
                          duration=duration, prefix=prefix, state_file=Path(state).expanduser() if state else None,
                          workers=workers, mqtt=mqtt)
        sim_state = SimState(opts.state_file)
        # The CA first, in a loop of its own: the workers are forked before the parent's loop starts.
        ca_pem = asyncio.run(_trusted_ca(server_url, token, ca, sim_state))
        # A terminal gets a live table; a log (no terminal) a status line on every change and every 10 s.
        summary = asyncio.run(_supervise(opts, sim_state, ca_pem, live=not json and console.is_terminal,
                                         lines=not json and not console.is_terminal))
    if json:
        print_json(summary)
    else:
        print_object(_human(summary))
    if summary["enrolled"] == 0:
        fail(f"no device could enroll: {summary['last_error'] or 'stopped before the first attempt'}",
             "Check --server, --token (fleetd tokens create) and --ca.")
    if mqtt and summary["active"] and not summary["mqtt"]["devices_connected"]:
        fail(f"no device could connect to the MQTT broker: {summary['last_error'] or 'stopped before it tried'}",
             "Check that `fleetd serve --mqtt` names the broker by an address this machine reaches, and that the "
             "broker runs what `fleetd mqtt broker-config` printed (docs/mqtt.md).")
