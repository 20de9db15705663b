"""The device owner's remote-access settings: ``agent.conf`` (docs/remote-access.md, "The device setting").

Remote access is off until the device's own config turns it on, so that whoever holds the server (or an admin key)
cannot open a shell on a device whose owner never allowed it. The file is ``<state dir>/agent.conf`` (or
``$FLEET_AGENT_CONFIG``), ``key = value`` lines in TOML's syntax (this reads the subset it needs: Python 3.9 has
no TOML reader)::

    remote_access = true
    remote_user = "pi"        # the user terminals run as; "root" only if written so
    remote_shell = "/bin/bash"  # default: the user's login shell
    remote_copy_dirs = "/home/pi:/var/lib/myapp"  # fleetd devices cp: only in these directories (default: none)
    remote_forward = true     # fleetd devices forward: TCP connections from the device (default: off)

The install one-liner writes it with ``--remote-access [--remote-user USER]``. Standard library only: imported
at every start; the remote-access code (remote.py, with the WebSocket library) only when this turns it on.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError

KEYS = ("remote_access", "remote_user", "remote_shell", "remote_copy_dirs", "remote_forward")


@dataclass(frozen=True)
class RemoteConfig:
    remote_access: bool = False
    remote_user: str = ""
    remote_shell: str = ""
    path: str = ""
    copy_dirs: tuple[str, ...] = ()  # absolute directories file copies may read and write in
    forward: bool = False


def config_path(state_dir: Path, env: dict[str, str] | None = None) -> Path:
    e = os.environ if env is None else env
    return Path(e.get("FLEET_AGENT_CONFIG") or state_dir / "agent.conf")


def _value(raw: str, where: str) -> bool | str:
    """``true``, ``false`` or a quoted string (no escapes), then perhaps a ``# comment``."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        rest = raw[end + 1:].strip() if end > 0 else "?"
        if end > 0 and (not rest or rest.startswith("#")):
            return raw[1:end]
    else:
        word = raw.split("#", 1)[0].strip()
        if word in ("true", "false"):
            return word == "true"
    raise ConfigError(f"{where}: a value is true, false or a quoted string, got {raw!r}")


def load(path: Path) -> RemoteConfig:
    """The settings in ``path``; all off when there is no such file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RemoteConfig(path=str(path))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    found: dict[str, bool | str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        key = key.strip()
        where = f"{path} line {n}"
        if not sep or key not in KEYS:
            raise ConfigError(f"{where}: expected one of {', '.join(KEYS)} = VALUE, got {line!r}")
        found[key] = _value(raw, where)
    access = found.get("remote_access", False)
    if not isinstance(access, bool):
        raise ConfigError(f"{path}: remote_access is true or false, got {access!r}")
    user, shell = found.get("remote_user", ""), found.get("remote_shell", "")
    if not isinstance(user, str) or not isinstance(shell, str):
        raise ConfigError(f"{path}: remote_user and remote_shell are quoted strings")
    dirs, forward = found.get("remote_copy_dirs", ""), found.get("remote_forward", False)
    if not isinstance(dirs, str) or not isinstance(forward, bool):
        raise ConfigError(f"{path}: remote_copy_dirs is a quoted string (directories joined by ':'), remote_forward "
                          "true or false")
    copy_dirs = tuple(d for d in dirs.split(":") if d)
    if any(not os.path.isabs(d) for d in copy_dirs):
        raise ConfigError(f"{path}: remote_copy_dirs holds absolute directories joined by ':', got {dirs!r}")
    return RemoteConfig(access, user, shell, str(path), copy_dirs, forward)


def import_remote() -> Any:
    """The remote module, with the WebSocket library. websockets' version module imports importlib.metadata (which
    pulls in zipfile, csv and importlib.resources) for development checkouts only: 0.85 MiB of the agent's idle
    memory for nothing (its target is < 40 MiB, docs/performance.md). An empty placeholder stands in for it while
    websockets loads, unless something already imported the real one; if a websockets release ever needs it at
    import, it is imported again without the placeholder."""
    placeholder = None
    if "importlib.metadata" not in sys.modules:
        placeholder = sys.modules["importlib.metadata"] = types.ModuleType("importlib.metadata")
    try:
        from . import remote
    except Exception:
        if placeholder is None:
            raise
        for name in [m for m in sys.modules if m == "websockets" or m.startswith("websockets.")]:
            del sys.modules[name]
        sys.modules.pop(__package__ + ".remote", None)
        del sys.modules["importlib.metadata"]
        placeholder = None
        from . import remote
    finally:
        if placeholder is not None and sys.modules.get("importlib.metadata") is placeholder:
            del sys.modules["importlib.metadata"]
    return remote
