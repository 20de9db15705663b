#!/usr/bin/env python3
"""Run the fleet-agent, and give a newly installed agent a trial run with a way back.

    python3 launcher.py --state-dir /var/lib/fleet-agent [--agent /opt/fleet-agent/fleet-agent.pyz] [-- AGENT ARGS]

In ``<state dir>/agent/``: ``<version>/fleet-agent.pyz``, and the symlinks
``current`` and ``next``, each naming a ``<version>``.

- ``next`` set and not ``current``: a new agent awaits its trial. It runs with
  ``FLEET_AGENT_TRIAL=<version>`` and confirms itself, after its first
  successful check-in, by pointing ``current`` at its version. If it exits
  first, or has not confirmed within the trial window (120 s;
  ``FLEET_AGENT_TRIAL_SECONDS``), it is stopped, ``next`` is removed,
  ``rolled_back.json`` records why, and the agent in ``current`` runs again (and
  reports the update ``rolled_back``).
- Otherwise ``current`` runs (``--agent`` while there is none). Exit code 75
  means "a new agent is in ``next``": start its trial. Any other exit ends the
  launcher with that code; systemd starts it again.

Standard library only and no fleet_agent import: this file is copied beside the zipapp.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SELF_UPDATE_EXIT = 75
TRIAL_ENV = "FLEET_AGENT_TRIAL"
LAUNCHED_ENV = "FLEET_AGENT_LAUNCHER"
TRIAL_SECONDS_ENV = "FLEET_AGENT_TRIAL_SECONDS"
DEFAULT_TRIAL_SECONDS = 120.0
PYZ = "fleet-agent.pyz"
NOTE = "rolled_back.json"

_child: subprocess.Popen | None = None
_stopping = False


def read_link(path: Path) -> str | None:
    try:
        return os.readlink(str(path))
    except OSError:
        return None


def write_note(agent_dir: Path, note: dict) -> None:
    tmp = agent_dir / (NOTE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(note, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, agent_dir / NOTE)
    fd = os.open(str(agent_dir), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spawn(args: argparse.Namespace, version: str | None, trial: bool) -> subprocess.Popen:
    global _child
    pyz = args.state_dir / "agent" / version / PYZ if version else args.agent
    if pyz is None or not Path(pyz).is_file():
        sys.exit(f"launcher: no agent to run: {pyz or args.state_dir / 'agent/current'} is missing; "
                 "install it, or pass --agent PATH")
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env.pop(TRIAL_ENV, None)
    if trial and version:
        env[TRIAL_ENV] = version
    _child = subprocess.Popen([sys.executable, str(pyz), "run", "--state-dir", str(args.state_dir), *args.rest],
                              env=env)
    if _stopping:  # told to stop while starting it
        _child.terminate()
    return _child


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def run_trial(args: argparse.Namespace, version: str, window: float) -> subprocess.Popen | None:
    """The confirmed new agent, still running; None when it failed its trial (and was stopped)."""
    agent_dir = args.state_dir / "agent"
    p = spawn(args, version, trial=True)
    deadline = time.monotonic() + window
    reason = ""
    while read_link(agent_dir / "current") != version:
        code = p.poll()
        if code is not None:
            reason = f"the new agent {version} exited with code {code} before its first successful check-in"
            break
        if _stopping:
            return p
        if time.monotonic() >= deadline:
            stop(p)
            reason = f"the new agent {version} did not check in within its {window:g} s trial"
            break
        time.sleep(0.2)
    if read_link(agent_dir / "current") == version:  # confirmed (perhaps at the last moment): it stays
        return p
    (agent_dir / "next").unlink()
    write_note(agent_dir, {"version": version, "reason": reason,
                           "restored": read_link(agent_dir / "current") or ""})
    return None


def _on_signal(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    if _child is not None and _child.poll() is None:
        _child.send_signal(signum)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fleet-agent with trial boots of new versions.")
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("FLEET_AGENT_STATE_DIR",
                                                                             "/var/lib/fleet-agent")))
    parser.add_argument("--agent", type=Path, help="the agent zipapp to run while none is installed in the state dir")
    parser.add_argument("rest", nargs="*", help="more arguments for 'fleet-agent run' (after --)")
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir.resolve()
    window = float(os.environ.get(TRIAL_SECONDS_ENV) or DEFAULT_TRIAL_SECONDS)
    agent_dir = args.state_dir / "agent"
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not _stopping:
        current, pending = read_link(agent_dir / "current"), read_link(agent_dir / "next")
        if pending and pending != current:
            p = run_trial(args, pending, window)
            if p is None:
                continue
        else:
            if pending:
                (agent_dir / "next").unlink()
            p = spawn(args, current, trial=False)
        code = p.wait()
        if code != SELF_UPDATE_EXIT or _stopping:
            return code if code >= 0 else 128 - code
    return 0


if __name__ == "__main__":
    sys.exit(main())
