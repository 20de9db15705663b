"""The built-in ``os-image`` module: a whole-OS A/B update, confirmed only once the new OS has reached the server.

Back end: RAUC (a ``.raucb`` bundle; the artifact's metadata ``backend=rauc`` says so explicitly). The device
runs ``rauc service`` with its system.conf (docs/agent.md "os-image"); the agent uses RAUC's command line
(``FLEET_AGENT_RAUC``, default ``rauc``), which talks to that service.

- Download: the back end is known and reachable; the slot booted now is kept (``rauc status``).
- ArtifactInstall: ``rauc install <bundle>`` writes the other slot and makes it the bootloader's primary.
- NeedsArtifactReboot: Automatic — the agent reboots the device (``FLEET_AGENT_REBOOT_CMD``).
- At the agent's next start, in the new slot: the trial window (metadata ``trial_seconds``, default 600) starts;
  ArtifactVerifyReboot runs only when the install action comes back from the server, i.e. once the new OS
  has reached it; ArtifactCommit is ``rauc status mark-good booted``. When the window passes first, the
  install fails: ArtifactRollback is ``rauc status mark-bad booted`` + ``mark-active other`` and the device is
  rebooted into the previous slot, which ArtifactVerifyRollbackReboot marks good again; the action ends
  ``rolled_back`` once it comes back.
- At the agent's start in the old slot (the bootloader fell back: the new OS did not come up): the install
  failed; the new slot is marked bad, no reboot is needed, and the action ends ``rolled_back``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from typing import Any

from . import Job, ModuleError, Reboot, UpdateModule

RAUC_ENV = "FLEET_AGENT_RAUC"
DEFAULT_TRIAL = 600.0
INSTALL_TIMEOUT = 3600.0
QUERY_TIMEOUT = 120.0
TAIL = 600
BACKENDS = ("rauc",)


def _backend(job: Job) -> str:
    chosen = job.meta.get("backend", "")
    if not chosen:
        if str(job.record["file_name"]).endswith(".raucb"):
            chosen = "rauc"
        else:
            raise ModuleError("the os-image module cannot tell the back end of this artifact: push a .raucb "
                              "RAUC bundle, or say it with --meta backend=rauc")
    if chosen not in BACKENDS:
        raise ModuleError(f"os-image back end {chosen!r} is not supported by this agent (supported: "
                          f"{', '.join(BACKENDS)}); push the artifact with --meta backend=rauc")
    return chosen


def _trial_seconds(job: Job) -> float:
    raw = job.meta.get("trial_seconds", "")
    if not raw:
        return DEFAULT_TRIAL
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= 7 * 86400:
        raise ModuleError(f"the metadata trial_seconds {raw!r} must be a number of seconds from 1 to 604800")
    return seconds


class Rauc:
    """RAUC's command line, as the module uses it."""

    def __init__(self) -> None:
        self.command = shlex.split(os.environ.get(RAUC_ENV) or "rauc")

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT) -> str:
        argv = [*self.command, *args]
        try:
            p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ModuleError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
        except OSError as e:
            raise ModuleError(f"cannot run {argv[0]}: {e.strerror}; install RAUC (Debian: apt install rauc) or set "
                              f"{RAUC_ENV} to its command") from None
        if p.returncode != 0:
            out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace").strip()
            last = [line for line in out.splitlines() if line.startswith("LastError:")]  # rauc install's reason
            err = "; ".join([*last, err] if last else [err or out.strip()])[-TAIL:]
            raise ModuleError(f"{' '.join(argv)} exited with code {p.returncode}: {err} (is `rauc service` running "
                              "with the board's system.conf? see docs/agent.md \"os-image\")")
        return p.stdout.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        out = self.run("status", "--output-format=json")
        try:
            st = json.loads(out)
        except ValueError:
            raise ModuleError(f"rauc status gave no JSON: {out[:200]!r}") from None
        if not isinstance(st, dict) or not st.get("booted"):
            raise ModuleError("rauc cannot tell the booted slot (no rauc.slot= on the kernel command line, or a "
                              "bootname missing in system.conf)")
        return st

    def booted(self) -> str:
        return str(self.status()["booted"])

    def primary_bootname(self) -> str:
        st = self.status()
        primary = st.get("boot_primary")
        for entry in st.get("slots") or []:
            for slot, info in entry.items():
                if slot == primary:
                    return str(info.get("bootname") or "")
        raise ModuleError(f"rauc status names no primary slot with a bootname after the install ({primary!r})")


class OsImageModule(UpdateModule):
    name = "os-image"

    def supports_rollback(self, job: Job) -> bool:
        return True

    def needs_reboot(self, job: Job) -> Reboot:
        return Reboot.AUTOMATIC

    def state_Download(self, job: Job) -> None:
        job.data["backend"] = _backend(job)
        job.data["trial_seconds"] = _trial_seconds(job)
        bundles = list(job.files.iterdir())
        if len(bundles) != 1 or not bundles[0].is_file():
            raise ModuleError("an os-image artifact is one RAUC bundle file (.raucb)")
        job.data["from"] = Rauc().booted()

    def state_ArtifactInstall(self, job: Job) -> None:
        rauc = Rauc()
        rauc.run("install", str(next(job.files.iterdir())), timeout=INSTALL_TIMEOUT)
        target = rauc.primary_bootname()
        if target == job.data["from"]:
            raise ModuleError(f"after rauc install the primary slot is still the booted one ({target}); check the "
                              "slots in system.conf")
        job.data["to"] = target

    def awaits_server(self, job: Job) -> float | None:
        if Rauc().booted() in (job.data.get("from"), None) or "to" not in job.data:
            return None  # the bootloader fell back: verify now (it fails)
        deadline = job.data.get("trial_deadline")
        if deadline is None:  # the first start in the new slot: the window opens
            deadline = job.data["trial_deadline"] = time.time() + float(job.data["trial_seconds"])
        return float(deadline) - time.time()

    def state_ArtifactVerifyReboot(self, job: Job) -> None:
        booted = Rauc().booted()
        if booted != job.data.get("to"):
            raise ModuleError(f"the device runs slot {booted} again, not the new slot {job.data.get('to')}: the "
                              "bootloader fell back (the new OS did not come up, or was not confirmed in time)")

    def state_ArtifactCommit(self, job: Job) -> None:
        Rauc().run("status", "mark-good", "booted")

    def rollback_needs_reboot(self, job: Job) -> bool:
        return "from" in job.data and Rauc().booted() != job.data["from"]

    def state_ArtifactRollback(self, job: Job) -> None:
        if "from" not in job.data:
            return  # Download did not finish: nothing changed
        rauc = Rauc()
        if rauc.booted() != job.data["from"]:  # in the new slot (a cut may have lost its name): leave it
            rauc.run("status", "mark-bad", "booted")
            rauc.run("status", "mark-active", "other")
        else:  # still (or again) in the old slot: it stays the one to boot, confirmed
            rauc.run("status", "mark-bad", "other")
            rauc.run("status", "mark-active", "booted")
            rauc.run("status", "mark-good", "booted")

    def state_ArtifactVerifyRollbackReboot(self, job: Job) -> None:
        booted = Rauc().booted()
        if booted != job.data.get("from"):
            raise ModuleError(f"after the rollback the device runs slot {booted}, not the previous slot "
                              f"{job.data.get('from')}")
        Rauc().run("status", "mark-good", "booted")


__all__ = ["RAUC_ENV", "OsImageModule"]
