"""The README's tour, run as written against a real server: every command a new user copies must work.

The commands are the README's own, taken from its ```sh blocks between "## A tour" and the next "## " heading,
in order, in one bash (so the variables one block sets are there for the next, as in the user's terminal). What
the test changes, and nothing else:

- the server: one `fleetd serve` on a free loopback port with a temporary data dir, started here instead of by
  `make serve` in another terminal, and with a rollout pass every second (rollout_pass_seconds, default 5).
  FLEETD_SERVER and FLEETD_CA point the CLI at it, and `./fleetd-data` in a command is that data dir;
- `. .venv/bin/activate` is left out: `fleetd` on the PATH is this interpreter's fleetd (or $FLEETD_BIN);
- the commands run in an empty temporary folder, which must still be empty at the end (the tour writes its files
  under `mktemp -d`, not into the checkout);
- the install one-liner that "A real device" prints runs on this machine instead of a board: into a temporary
  `--prefix`, without systemd (as tests/agent/test_e2e_install.py runs it), with the remote-access options the
  README gives it (`--remote-user` the user running the test instead of pi); the agent it installed then runs
  here, and the README's `fleetd devices shell` block runs against it (the board's id for its name). So the
  server runs with remote access on, as the README says to start it for that block.

The blocks that need more than the two commands are in SKIPPED, each with its reason; the test fails when one of
them is no longer in the README, so nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.e2e_helpers import PYTHON, Admin, AgentProcess, agent_env, build_served_agent
from tests.e2e.server import ServerProcess, fleetd_cmd, run_cli
from tests.remote.helpers import ME, Device, wait_channel

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# A text that only the skipped block has -> why it cannot run here.
SKIPPED = {
    "make -C agent/rtos sim size": "builds the RTOS shim: needs gcc, pkg-config, libsodium and libcurl (the README "
                                   "lists them); tests/rtos builds and runs it",
    "--name thermo": "ships an app to a board running the agent (and the user's thermo.py); "
                     "tests/agent/test_e2e_install.py deploys an app to an installed agent",
    "podman import rootfs.tar": "builds a container image on the board (podman, busybox-static); "
                                "tests/agent/test_modules_container.py builds its images the same way",
    "--module container": "ships containers to a board running the agent with podman; "
                          "tests/agent/test_modules_container.py deploys them through a real server and agent",
    "fleetd devices shell": "opens a shell on the board's agent: run below, against the agent the one-liner "
                            "installed here",
}
ACTIVATE = ". .venv/bin/activate"
MARK = "@@ README block "


def tour_blocks() -> list[tuple[str, str]]:
    """(section heading, sh block) for every ```sh block of the tour, in order."""
    text = README.read_text()
    start = text.index("\n## A tour\n")
    end = text.index("\n## ", start + 1)
    section, blocks = "A tour", []
    for heading, block in re.findall(r"^### ([^\n]+)$|^```sh\n(.*?)^```", text[start:end], re.M | re.S):
        if heading:
            section = heading
        else:
            blocks.append((section, block))
    return blocks


def skip_reason(block: str) -> str | None:
    reasons = [why for marker, why in SKIPPED.items() if marker in block]
    return reasons[0] if reasons else None


def test_the_tour_shows_every_step_and_skips_only_what_needs_hardware() -> None:
    blocks = tour_blocks()
    for marker in SKIPPED:
        assert sum(marker in b for _, b in blocks) == 1, f"SKIPPED names {marker!r}, which no tour block has"
    run = "\n".join(b for _, b in blocks if skip_reason(b) is None)
    for step in ("fleetd simulate", "fleetd artifacts push", "fleetd devices deploy", "fleetd rollouts create",
                 "fleetd rollouts watch", "fleetd tokens create --uses 1", "--format rtos-image", "--ddi-gateway"):
        assert step in run, f"the tour no longer runs {step!r}"
    assert {s for s, b in blocks if skip_reason(b)} == {"A real device", "A microcontroller"}
    # What the skipped sections need is said in the README, before the block.
    text = README.read_text()
    assert "Needs a Raspberry Pi (or any Linux board" in text and "`libsodium-dev`" in text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    build_served_agent()  # the one-liner downloads the agent from the server
    # A rollout pass every second instead of every 5 s: the rollout's stages follow each other sooner.
    s = ServerProcess(tmp_path_factory.mktemp("tour") / "fleetd-data", env={"FLEETD_ROLLOUT_PASS_SECONDS": "1",
                                                                          "FLEETD_REMOTE_ACCESS": "true"}).start()
    yield s
    s.stop()


def test_the_tour_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    blocks = [(section, block) for section, block in tour_blocks() if skip_reason(block) is None]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fleetd").write_text(f"#!/bin/sh\nexec {shlex.join(fleetd_cmd())} \"$@\"\n")
    (bin_dir / "fleetd").chmod(0o755)
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for i, (section, block) in enumerate(blocks):
        assert block.count(ACTIVATE) <= 1
        block = block.replace(ACTIVATE, "").replace("./fleetd-data", shlex.quote(str(server.data_dir)))
        script += [f"printf '\\n%s\\n' {shlex.quote(f'{MARK}{i}: {section}')}", 'echo "(the tour at ${SECONDS}s)"',
                   block]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"  # `fleetd` is this tree's
    env = dict(os.environ, PATH=path, FLEETD_SERVER=server.url, FLEETD_CA=server.ca)
    env.pop("FLEETD_API_KEY", None)
    p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=400)
    assert p.returncode == 0, f"the tour failed (exit {p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-4000:]}"
    assert list(cwd.iterdir()) == [], "the tour left files in the folder it ran in"

    key = server.create_key("admin", "tour-check")
    env = {"FLEETD_SERVER": server.url, "FLEETD_CA": server.ca, "FLEETD_API_KEY": key}
    devices = json.loads(run_cli("devices", "list", "--json", env=env).stdout)
    assert sum(d["device_type"] == "sim" and d["status"] == "active" for d in devices) == 50
    rollouts = json.loads(run_cli("rollouts", "list", "--json", env=env).stdout)
    assert [(r["artifact"], r["state"]) for r in rollouts] == [("hello@1.1.0", "completed")]

    # "A real device": the one-liner `fleetd tokens create --uses 1` printed, run here instead of on a board.
    output = p.stdout.split(MARK)
    real = next(o for o in output if o.split("\n", 1)[0].endswith(": A real device"))
    one_liner = next(line for line in real.splitlines() if line.startswith("curl "))
    prefix = tmp_path / "board"
    remote = re.search(r"`(--remote-access\s+--remote-user) pi`", README.read_text())
    assert remote, "the README no longer gives the one-liner --remote-access --remote-user pi"
    options = f"{' '.join(remote[1].split())} {ME} --prefix {prefix} --no-systemd"
    install = subprocess.run(["bash", "-o", "pipefail", "-c", f"{one_liner} {options}"],
                             capture_output=True, text=True, env=agent_env(), timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    devices = json.loads(run_cli("devices", "list", "--json", env=env).stdout)
    board = [d for d in devices if d["device_type"] != "sim"]
    assert len(board) == 1 and board[0]["status"] == "active" and board[0]["tags"] == {"site": "lab"}

    # The README's shell block, against the agent the one-liner installed (as its systemd unit would run it).
    state = prefix / "var" / "lib" / "fleet-agent"
    agent = AgentProcess([PYTHON, str(prefix / "opt" / "fleet-agent" / "fleet-agent.pyz"), "run", "--state-dir",
                          str(state)], tmp_path / "agent.log", agent_env())
    try:
        wait_channel(server, Admin(server, key), Device(board[0]["id"], agent, state))
        block = next(b for _, b in tour_blocks() if "fleetd devices shell" in b)
        shell = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("raspberrypi", board[0]["id"])],
                               cwd=tmp_path, env=dict(os.environ, PATH=path, **env), stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60)
    finally:
        agent.stop()
    assert shell.returncode == 0 and " up " in shell.stdout, shell.stdout + shell.stderr
