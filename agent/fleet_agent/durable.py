"""Durable changes in the apps and agent areas: atomic symlink switches and tree removals.

Files are written with config.atomic_write (temp → fsync → rename); a power cut
leaves the old file or link or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .config import atomic_write, fsync_dir, write_json

__all__ = ["atomic_write", "fsync_dir", "read_json", "read_link", "remove_tree", "sweep", "switch_link",
           "write_json"]


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (never half-written: see atomic_write)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def read_link(link: Path) -> str | None:
    try:
        return os.readlink(str(link))
    except OSError:
        return None


def switch_link(link: Path, target: str) -> None:
    """Point symlink ``link`` at ``target`` (relative to the link's folder) in one rename."""
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, str(tmp))
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path) -> None:
    """Take ``path`` away in one rename, then delete it; a crash leaves a ``.trash-*`` that cleanup removes."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(4)}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def sweep(folder: Path) -> None:
    """Delete what interrupted writes left in ``folder``: ``.trash-*`` and ``.*.tmp``."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".trash-") or (p.name.startswith(".") and p.name.endswith(".tmp")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
