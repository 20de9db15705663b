"""docs/ddi.md's `fleetd` commands, run as written (in the doc's order) against a real server: every one of them
must work, and the DDI device they set up must poll with the token they print."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.e2e.server import run_cli

from .conftest import Fleetd

pytestmark = pytest.mark.e2e
DOC = Path(__file__).resolve().parents[2] / "docs" / "ddi.md"


def doc_commands() -> list[list[str]]:
    """Every `fleetd …` line in the doc's sh blocks (continuations joined, comments dropped)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("fleetd "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_doc_has_the_commands_an_admin_needs() -> None:
    verbs = {tuple(c[:2]) for c in doc_commands()}
    assert {("devices", "ddi-token"), ("tokens", "create"), ("tokens", "revoke"), ("tokens", "list"),
            ("artifacts", "push"), ("devices", "deploy"), ("rollouts", "create")} <= verbs


def test_every_command_in_the_doc_works(fleetd: Fleetd, tmp_path: Path) -> None:
    env = {"FLEETD_SERVER": fleetd.server.url, "FLEETD_API_KEY": fleetd.key, "FLEETD_CA": fleetd.server.ca}
    gateway_id = None
    ran = 0
    for args in doc_commands():
        if args[0] == "serve":
            continue  # the server under test is already running
        if args[:2] == ["tokens", "revoke"]:
            assert gateway_id, "the doc revokes a gateway token before it makes one"
            args = ["tokens", "revoke", gateway_id]
        if args[:2] == ["artifacts", "push"]:
            (tmp_path / Path(args[2]).name).write_bytes(b"a root filesystem image\n" * 64)
            args = [args[0], args[1], str(tmp_path / Path(args[2]).name), *args[3:]]
        p = run_cli(*args, env=env, check=False)
        assert p.returncode == 0, f"fleetd {shlex.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
        ran += 1
        if args[:2] == ["tokens", "create"] and "--json" in args:
            gateway_id = json.loads(p.stdout)["id"]
            assert gateway_id.startswith("ddg_")
        if args[:2] == ["devices", "ddi-token"] and "--json" in args:
            made = json.loads(p.stdout)
            assert set(made) >= {"device_id", "controller_id", "token"} and made["controller_id"] == "board-0042"
    assert ran >= 9

    # What the commands set up: board-0042 with the doc's type and tag, its token revoked by the doc.
    device = fleetd.find_device("board-0042")
    assert device is not None and device["device_type"] == "stm32mp1" and device["tags"]["site"] == "plant-3"
    token = fleetd.target_token("board-0042")["token"]
    with fleetd.ddi("board-0042", token) as c:
        poll = c.poll()
        assert poll.status == 200 and "deploymentBase" in poll.links  # the doc's deploy
        dep = c.deployment(poll.links["deploymentBase"])
        assert [(ch.part, ch.name, ch.version) for ch in dep.chunks] == [("bApp", "rootfs", "2.1.0")]
    assert any("rootfs@2.1.0" in json.dumps(r) for r in fleetd.cli_json("rollouts", "list"))  # the doc's rollout
