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
    from .sim_engine import SimOptions, SimState, Simulator


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


def _live_table(sim: Simulator) -> Table:
    c, s = sim.counts(), sim.stats
    t = Table(title=f"fleetd simulate → {sim.opts.server}", show_header=False, box=None, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("enrolled", f"{c['enrolled']} / {s.devices}")
    t.add_row("active · pending", f"{c['active']} · {c['pending']}" + (f" · revoked {c['revoked']}"
                                                                       if c["revoked"] else ""))
    t.add_row("check-ins/s", f"{s.rate():.1f}  ({s.check_ins} in all)")
    t.add_row("telemetry points", str(s.telemetry_points))
    t.add_row("actions done · failed", f"{s.actions_succeeded} · {s.actions_failed}")
    t.add_row("errors", f"[red]{s.errors}[/red]" if s.errors else "0")
    if s.throttled:
        t.add_row("throttled (429)", str(s.throttled))
    if s.last_error:
        t.add_row("last error", f"[dim]{s.last_error[:150]}[/dim]")
    return t


STATUS_EVERY = 10.0


class StatusLines:
    """Without a terminal: one status line whenever the counts change, and every STATUS_EVERY seconds."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.last: tuple[Any, ...] = ()
        self.at = 0.0

    def __call__(self) -> None:
        c, s = self.sim.counts(), self.sim.stats
        rate = s.rate()
        key = (*c.values(), s.actions_succeeded, s.actions_failed, s.errors, s.throttled)
        t = time.monotonic()
        if key == self.last and t - self.at < STATUS_EVERY:
            return
        self.last, self.at = key, t
        line = (f"{time.strftime('%H:%M:%S')} enrolled {c['enrolled']}/{s.devices}, active {c['active']}, "
                f"pending {c['pending']}{', revoked ' + str(c['revoked']) if c['revoked'] else ''}; "
                f"{rate:.1f} check-ins/s ({s.check_ins} in all); actions {s.actions_succeeded} done, "
                f"{s.actions_failed} failed; errors {s.errors}"
                f"{f' (last: {s.last_error[:150]})' if s.errors else ''}")
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def _run(opts: SimOptions, state: SimState, ca: str | None, live: bool, lines: bool = False
               ) -> dict[str, Any]:
    from .sim_engine import Simulator, make_http_client

    ca_pem = await _trusted_ca(opts.server, opts.token, ca, state)
    async with make_http_client(ca_pem, opts.devices) as http:
        sim = Simulator(opts, http, state)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sim.stop.set)
        try:
            display = (Live(_live_table(sim), console=console, refresh_per_second=4, transient=True) if live
                       else nullcontext())
            status = StatusLines(sim) if lines else None
            with display as shown:
                def tick() -> None:
                    if shown is not None:
                        shown.update(_live_table(sim))
                    elif status is not None:
                        status()
                summary = await sim.run(tick)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return summary


def simulate(
    server: ServerOpt = None,
    token: Annotated[str, typer.Option(
        "--token", envvar="FLEETD_JOIN_TOKEN",
        help="Join token (fleetd tokens create); without one devices enroll as pending and wait to be "
             "claimed.")] = "",
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many devices to simulate.")] = 10,
    interval: Annotated[float | None, typer.Option(
        help="Seconds between check-ins, ±10% jitter (default: the interval the server asks for).",
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
    json: JsonOpt = False,
) -> None:
    """Simulate N devices (type 'sim') in one process: enroll, check in, send telemetry, install updates."""
    from .sim_engine import SimOptions, SimState

    server_url = (server or DEFAULT_SERVER).rstrip("/")
    with errors_reported():
        opts = SimOptions(server=server_url, token=token, devices=devices, interval=interval, fail_rate=fail_rate,
                          duration=duration, prefix=prefix, state_file=Path(state).expanduser() if state else None)
        sim_state = SimState(opts.state_file)
        # A terminal gets a live table; a log (no terminal) a status line on every change and every 10 s.
        summary = asyncio.run(_run(opts, sim_state, ca, live=not json and console.is_terminal,
                                   lines=not json and not console.is_terminal))
    if json:
        print_json(summary)
    else:
        print_object(summary)
    if summary["enrolled"] == 0:
        fail(f"no device could enroll: {summary['last_error'] or 'stopped before the first attempt'}",
             "Check --server, --token (fleetd tokens create) and --ca.")
