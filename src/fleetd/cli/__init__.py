"""The fleetd command line: ``fleetd <noun> <verb>``."""

from __future__ import annotations

import functools
import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    import typer

HELP = "fleetd: a self-hosted fleet manager. Start with 'fleetd serve'."


def _typer() -> typer.Typer:
    import typer

    return typer.Typer(name="fleetd", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=False)


@functools.cache
def full_app() -> typer.Typer:
    """Every command. Built on first use: `fleetd serve` alone does not import the others (the API client, rich's
    tables, the simulator), which the server would carry in memory for nothing."""
    from . import admin, devices, logs, remote_cmds, shell, tokens
    from .alerts import alerts_app
    from .artifacts import artifacts_app
    from .backup import backup as backup_command
    from .backup import restore as restore_command
    from .ca import ca_app
    from .mqtt import mqtt_app
    from .rollouts import rollouts_app
    from .serve_command import serve
    from .simulate import simulate as simulate_command
    from .store import store_app
    from .telemetry import telemetry_app

    app = _typer()
    app.command("serve")(serve)
    app.add_typer(admin.users_app, name="users")
    app.add_typer(admin.keys_app, name="keys")
    app.add_typer(devices.devices_app, name="devices")
    devices.devices_app.command("logs")(logs.devices_logs)
    devices.devices_app.command("shell")(shell.devices_shell)
    devices.devices_app.command("cp")(remote_cmds.devices_cp)
    devices.devices_app.command("forward")(remote_cmds.devices_forward)
    devices.devices_app.command("replay")(remote_cmds.devices_replay)
    app.add_typer(tokens.tokens_app, name="tokens")
    app.add_typer(artifacts_app, name="artifacts")
    app.add_typer(rollouts_app, name="rollouts")
    app.add_typer(telemetry_app, name="telemetry")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(ca_app, name="ca")
    app.add_typer(mqtt_app, name="mqtt")
    app.add_typer(store_app, name="store")
    app.command("audit")(admin.audit_command)
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
    app.command("simulate")(simulate_command)
    app.command("version")(version)
    return app


def serve_app() -> typer.Typer:
    """`fleetd serve` only: the same command, parsed and helped the same way."""
    from .serve_command import serve

    app = _typer()
    app.callback()(lambda: None)  # a group, so that the command keeps its name: `fleetd serve ...`
    app.command("serve")(serve)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # `from fleetd.cli import app` (tests, typer's testing runner): every command
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def commit() -> str:
    """The git commit this build came from (baked in by the packaging, else read from git)."""
    import importlib
    try:
        return str(importlib.import_module("fleetd._build").COMMIT)
    except ImportError:
        pass
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version() -> None:
    """Print the version and the commit it was built from."""
    import typer

    typer.echo(f"fleetd {__version__} (commit {commit()})")


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        # The start makes ~100,000 objects that all stay (modules, the app, the device directory): collecting while
        # it runs costs ~45 ms and finds a few hundred to free. Off until serve._tune_interpreter freezes them.
        gc.disable()
        from .serve import parse_args, run

        kwargs = parse_args(sys.argv[2:])
        if kwargs is not None:  # the usual start: without typer (serve.parse_args)
            run(**kwargs)
            return
        serve_app()()
        return
    full_app()()
