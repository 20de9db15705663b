"""The agent runs on the devices' own Pythons, 3.9 and newer (Raspberry Pi OS), and never imports fleetd.

Every module is held to 3.9 syntax here, and `make lint` holds it there too: ruff checks the agent with a
3.9 target (so it neither rewrites it into newer syntax nor lets 3.10+ syntax through), and mypy types it
as strictly as the server, once more against the 3.10 standard library (the oldest mypy knows)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fleet_agent

ROOT = Path(__file__).resolve().parents[2]
AGENT = Path(fleet_agent.__file__).parent
MODULES = sorted(str(p.relative_to(AGENT)) for p in AGENT.rglob("*.py"))


def has_annotations(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            if node.returns or any(arg.annotation for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs,
                                                                *filter(None, [a.vararg, a.kwarg])]):
                return True
    return False


@pytest.mark.parametrize("module", MODULES)
def test_every_agent_module_parses_as_python_3_9(module: str) -> None:
    source = (AGENT / module).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    # 3.9 evaluates annotations such as `str | None` at definition time unless they stay strings.
    if has_annotations(tree):
        assert "from __future__ import annotations" in source
    assert "import fleetd" not in source and "from fleetd" not in source


PROBE = "import datetime\n\nmatch 1:\n    case _:\n        UTC = datetime.timezone.utc\n"


def ruff(path: str) -> str:
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                        "--stdin-filename", path, "-"], input=PROBE, cwd=ROOT, capture_output=True, text=True)
    return p.stdout + p.stderr


def test_ruff_holds_the_agent_to_python_3_9_and_the_server_to_3_11() -> None:
    agent = ruff("agent/fleet_agent/probe.py")
    assert "Cannot use `match` statement on Python 3.9" in agent
    assert "UP017" not in agent  # datetime.UTC is 3.11+: never suggested (or --fix'ed) into the agent
    server = ruff("src/fleetd/probe.py")
    assert "UP017" in server and "Cannot use `match`" not in server


def test_make_lint_covers_the_agent() -> None:
    makefile = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert any(line.split()[1:3] == ["check", "src"] and "agent" in line.split() for line in makefile.splitlines()
               if "ruff" in line)
    assert any(line.split()[1:] == ["--python-version", "3.10", "--cache-dir", ".mypy_cache/py310", "-p", "fleet_agent"]
               for line in makefile.splitlines() if "mypy" in line)
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert "fleet_agent" in mypy["packages"] and "agent" in mypy["mypy_path"].split(":")
