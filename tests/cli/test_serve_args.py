"""`fleetd serve` parses its usual command lines without typer (cli/serve.py parse_args), exactly as typer would,
and the server starts without importing typer, pydantic or rich (each costs start time, docs/performance.md)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from fleetd.cli import serve_app
from fleetd.cli.serve import FLAG, NUMBER, OPTIONS, REPEATED, VALUE, parse_args, run


def typer_command() -> Any:
    return typer.main.get_command(serve_app()).commands["serve"]  # type: ignore[attr-defined]


def run_defaults() -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(run).parameters.items()}


def typer_params(args: list[str]) -> dict[str, Any]:
    """What typer hands serve_command.serve for ARGS (repeatable options it was not given: empty, which run() takes
    as None)."""
    params = dict(typer_command().make_context("serve", list(args)).params)
    return {k: (list(v) or None) if isinstance(v, (list, tuple)) else v for k, v in params.items()}


def test_options_are_typers_options() -> None:
    declared = {}
    for p in typer_command().params:
        kind = FLAG if p.is_flag else REPEATED if p.multiple else NUMBER if p.name == "port" else VALUE
        declared.update({opt: (p.name, kind) for opt in [*p.opts, *p.secondary_opts]})
    assert {opt: (dest, kind) for opt, (dest, kind) in OPTIONS.items()} == declared
    assert set(run_defaults()) == {dest for dest, _ in OPTIONS.values()}


@pytest.mark.parametrize("args", [
    [],
    ["--data-dir", "/tmp/d", "--host", "127.0.0.1", "--port", "8443", "--no-mdns", "--log-level", "warning"],
    ["--port=0", "--no-tls", "--public-url=https://fleet.example.net:8420", "--config", "x.toml"],
    ["--ddi-tenant", "ACME", "--ddi-anonymous-download", "--webhook-allow-private"],
    ["--webhook-allowed-network", "127.0.0.1/32", "--webhook-allowed-network=10.0.0.0/8",
     "--trusted-proxy", "10.1.1.1", "--host="],
    ["--blob-store", "s3://fleet-artifacts/prod"],
    ["--database", "postgresql://fleetd@db.example.net:5432/fleetd?sslmode=verify-full"],
    ["--port", "08420", "--data-dir", "with=equals sign"],
])
def test_parsed_as_typer_parses(args: list[str]) -> None:
    parsed = parse_args(args)
    assert parsed is not None
    assert run_defaults() | parsed == typer_params(args)


@pytest.mark.parametrize("args", [
    ["--help"], ["--port", "abc"], ["--port", "-1"], ["--port", "\uff18\uff14\uff12\uff10"], ["--port="], ["--host"],
    ["--host", "--port", "1"], ["--prot", "1"], ["--no-tls=1"], ["--port", "1", "--port", "2"],
    ["--no-mdns", "--no-mdns"], ["-h"], ["extra"], ["--data-dir", "d", "--"],
])
def test_anything_else_is_left_to_typer(args: list[str]) -> None:
    assert parse_args(args) is None


def test_the_start_imports_no_typer_pydantic_or_rich(tmp_path: Path) -> None:
    """What `fleetd serve` imports until uvicorn runs the app: the command line, the Fleet, the app."""
    code = f"""
import sys
from fleetd.cli import serve
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
kwargs = serve.parse_args(["--data-dir", {str(tmp_path / "data")!r}, "--no-mdns"])
fleet = Fleet(load_settings({{"data_dir": kwargs["data_dir"], "mdns": False}}, None), first_admin=True)
asgi_app(fleet)
fleet.close()
print(sorted(m for m in sys.modules if m.partition(".")[0] in ("typer", "pydantic", "pydantic_core", "rich", "click")))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_the_collector_is_off_during_the_start_and_on_once_it_is_tuned() -> None:
    """cli.main turns the cyclic collector off for `fleetd serve`'s start (~45 ms of collections that free
    little); serve._tune_interpreter, run just before serving, must turn it back on or the server would leak cycles."""
    script = (
        "import gc, sys\n"
        "from fleetd import cli\n"
        "from fleetd.cli import serve\n"
        "def fake_run(**kw):\n"
        "    print('start', gc.isenabled())\n"
        "    serve._tune_interpreter()\n"
        "    print('serving', gc.isenabled(), gc.get_threshold()[0], gc.get_freeze_count() > 1000)\n"
        "serve.run = fake_run\n"
        "sys.argv = ['fleetd', 'serve', '--no-mdns']\n"
        "cli.main()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["start False", "serving True 10000 True"], out
