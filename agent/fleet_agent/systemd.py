"""Apps as systemd units (``fleet-app-<name>.service``) where systemd is PID 1 and the agent is root.

The same interface as supervisor.Supervisor; systemd does the restarting and
keeps the apps running while the agent itself restarts. ``make_supervisor``
picks the backend: the built-in supervisor unless systemd is really in charge,
and always with ``FLEET_AGENT_SUPERVISOR=builtin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .durable import atomic_write
from .supervisor import STOP_TIMEOUT, ProcessManager, ProcessSpec, ProcessStatus, Supervisor

UNIT_DIR = Path("/etc/systemd/system")
_RESTART = {"always": "always", "on-failure": "on-failure", "never": "no"}


def unit_name(app: str) -> str:
    return f"fleet-app-{app}.service"


def _quote(arg: str) -> str:
    # systemd.syntax: a double-quoted word with C-style escapes; % and $ are specifiers/variables there.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def unit_text(spec: ProcessSpec) -> str:
    lines = [
        "[Unit]",
        f"Description=fleet app {spec.description or spec.name}",
        "",
        "[Service]",
        "ExecStart=" + " ".join(_quote(a) for a in spec.argv),
        f"WorkingDirectory={_quote(spec.cwd)}",
        *(f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(spec.env.items())),
        f"Restart={_RESTART[spec.restart]}",
        "RestartSec=2",
        f"StandardOutput=append:{spec.log}",
        "StandardError=inherit",
        "KillMode=control-group",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


class SystemdSupervisor:
    kind = "systemd"
    keeps_running = True

    def __init__(self, unit_dir: Path = UNIT_DIR, systemctl: str = "systemctl") -> None:
        self.unit_dir = unit_dir
        self.systemctl = systemctl
        self._base: dict[str, int] = {}

    def _ctl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([self.systemctl, *args], capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"systemctl {' '.join(args)} failed: {r.stderr.strip() or r.returncode}")
        return r.stdout

    def start(self, spec: ProcessSpec) -> None:
        atomic_write(self.unit_dir / unit_name(spec.name), unit_text(spec).encode())
        self._ctl("daemon-reload")
        self._ctl("enable", unit_name(spec.name), check=False)
        self._ctl("restart", unit_name(spec.name))
        self._base[spec.name] = self._show(spec.name).get("NRestarts", 0)

    def resume(self, spec: ProcessSpec) -> None:
        """At agent start: leave a unit that already runs this very spec alone (apps outlive the agent)."""
        unit = self.unit_dir / unit_name(spec.name)
        try:
            same = unit.read_text() == unit_text(spec)
        except OSError:
            same = False
        if same and self._show(spec.name).get("active") == 1:
            self._base[spec.name] = self._show(spec.name).get("NRestarts", 0)
            return
        self.start(spec)

    def restart(self, name: str) -> None:
        self._ctl("restart", unit_name(name))

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        self._ctl("stop", unit_name(name), check=False)

    def forget(self, name: str) -> None:
        self._ctl("disable", "--now", unit_name(name), check=False)
        (self.unit_dir / unit_name(name)).unlink(missing_ok=True)
        self._ctl("daemon-reload", check=False)
        self._base.pop(name, None)

    def _show(self, name: str) -> dict[str, int]:
        out = self._ctl("show", unit_name(name), "-p", "ActiveState,NRestarts,MainPID,ExecMainStatus", check=False)
        values: dict[str, int] = {}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "ActiveState":
                values["active"] = {"active": 1, "failed": -1}.get(value, 0)
            elif value.isdigit():
                values[key] = int(value)
        return values

    def status(self, name: str) -> ProcessStatus:
        v = self._show(name)
        restarts = max(v.get("NRestarts", 0) - self._base.get(name, 0), 0)
        state = {1: "running", -1: "failed"}.get(v.get("active", 0), "stopped")
        return ProcessStatus(state=state, pid=v.get("MainPID") or None, restarts=restarts,
                             exits=restarts + (0 if state == "running" else 1),
                             last_exit=v.get("ExecMainStatus"))

    def close(self) -> None:
        """The apps keep running under systemd while the agent is away."""


def systemd_in_charge() -> bool:
    return (hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/run/systemd/system").is_dir()
            and shutil.which("systemctl") is not None)


def make_supervisor() -> ProcessManager:
    choice = os.environ.get("FLEET_AGENT_SUPERVISOR", "").strip().lower()
    if choice == "systemd" or (choice != "builtin" and systemd_in_charge()):
        return SystemdSupervisor()
    return Supervisor()
