"""Updating the agent itself: stage the new zipapp, hand over to the launcher, confirm or learn it was undone.

``agent/<version>/fleet-agent.pyz`` holds each agent; ``agent/current``,
``agent/next`` and ``agent/previous`` are symlinks to a ``<version>``. An
update goes: verify → stage as ``next`` → exit with launcher.SELF_UPDATE_EXIT →
the launcher runs ``next`` on trial → the new agent calls :func:`confirm`
after its first successful check-in (``current`` := its version) and reports
the action succeeded. A new agent that fails its trial is stopped by the
launcher, which restores the old one with ``agent/rolled_back.json``; the old
agent then reports the action ``rolled_back`` with the launcher's reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

from .durable import fsync_dir, read_json, read_link, remove_tree, sweep, switch_link, write_json
from .launcher import LAUNCHED_ENV, NOTE, PYZ, SELF_UPDATE_EXIT, TRIAL_ENV

AGENT_COMPONENT = "component.json"
_confirm_lock = threading.Lock()

__all__ = ["SELF_UPDATE_EXIT", "agent_component", "confirm", "current_version", "launched", "rolled_back",
           "stage", "trial_version"]


def agent_dir(state_dir: Path) -> Path:
    return state_dir / "agent"


def current_version(state_dir: Path) -> str | None:
    return read_link(agent_dir(state_dir) / "current")


def trial_version() -> str | None:
    """The version this agent runs on trial as, if the launcher started it for a trial."""
    return os.environ.get(TRIAL_ENV) or None


def launched() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def confirm(state_dir: Path) -> bool:
    """After a successful check-in: make this trial agent the current one. True when it is (or already was).

    Cheap when not on trial, so the run loop may call it after every check-in.
    """
    version = trial_version()
    if version is None:
        return False
    with _confirm_lock:  # the run loop and the executor may both confirm after the same check-in
        return _confirm(agent_dir(state_dir), version)


def _confirm(d: Path, version: str) -> bool:
    old = read_link(d / "current")
    if old == version:
        return True
    if read_link(d / "next") != version:
        return False
    if old:
        switch_link(d / "previous", old)
    switch_link(d / "current", version)
    (d / "next").unlink(missing_ok=True)
    fsync_dir(d)
    _prune(d, {version, old})
    return True


def _prune(d: Path, keep: set[str | None]) -> None:
    sweep(d)
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p.name not in keep:
            remove_tree(p)


def stage(state_dir: Path, version: str, source: Path, component: str) -> None:
    """Install a verified zipapp as ``agent/<version>/fleet-agent.pyz`` and point ``agent/next`` at it."""
    import zipfile

    if not zipfile.is_zipfile(source):
        raise ValueError("the agent artifact is not a zipapp (not a zip file)")
    with zipfile.ZipFile(source) as z:
        if "__main__.py" not in z.namelist():
            raise ValueError("the agent artifact is a zip without __main__.py, so not a runnable zipapp")
    d = agent_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    sweep(d)
    tmp = d / f".{version}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    target = tmp / PYZ
    shutil.copyfile(source, target)
    os.chmod(target, 0o755)
    with open(target, "rb") as f:
        os.fsync(f.fileno())
    if read_link(d / "current") != version:
        remove_tree(d / version)
        os.replace(tmp, d / version)
    else:
        remove_tree(tmp)
    fsync_dir(d)
    write_json(d / AGENT_COMPONENT, {"name": component})
    switch_link(d / "next", version)


def rolled_back(state_dir: Path, version: str) -> str | None:
    """The launcher's reason if it undid the trial of ``version``."""
    note = read_json(agent_dir(state_dir) / NOTE)
    if isinstance(note, dict) and note.get("version") == version:
        return str(note.get("reason") or "the new agent failed its trial")
    return None


def forget_rollback(state_dir: Path, version: str) -> None:
    """The rollback was reported: drop the note and the failed version."""
    d = agent_dir(state_dir)
    (d / NOTE).unlink(missing_ok=True)
    if read_link(d / "current") != version:
        remove_tree(d / version)


def agent_component(state_dir: Path) -> dict[str, Any] | None:
    """The agent as a component, once it was installed from an artifact (whose name the server knows)."""
    d = agent_dir(state_dir)
    meta = read_json(d / AGENT_COMPONENT)
    version = read_link(d / "current")
    if not isinstance(meta, dict) or not meta.get("name") or not version:
        return None
    return {"name": str(meta["name"]), "version": version, "state": "running", "health": "healthy", "restarts": 0}
