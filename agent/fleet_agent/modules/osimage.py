"""The built-in ``os-image`` module: a whole-OS A/B update, confirmed only once the new OS has reached the server.

Back ends (docs/agent.md "os-image"): RAUC (a ``.raucb`` bundle, or metadata ``backend=rauc``), through RAUC's
command line (``FLEET_AGENT_RAUC``, default ``rauc``) and the board's ``rauc service``; SWUpdate (a ``.swu``
image, or ``backend=swupdate``), through ``swupdate -i`` (``FLEET_AGENT_SWUPDATE``) and the bootloader
environment (``FLEET_AGENT_BOOTENV_GET`` / ``FLEET_AGENT_BOOTENV_SET``, default fw_printenv -n / fw_setenv).

- Download: the back end is known and answers; the slot booted now is kept in the journal.
- ArtifactInstall: the image is written to the other slot, which becomes the one to boot, on trial.
- NeedsArtifactReboot: Automatic — the agent reboots the device (``FLEET_AGENT_REBOOT_CMD``).
- At the agent's next start, in the new slot: the trial window (metadata ``trial_seconds``, default 600) opens;
  ArtifactVerifyReboot runs only when the install action comes back from the server, i.e. once the new OS
  has reached it; ArtifactCommit confirms the slot (``rauc status mark-good booted``; ``ustate=0``). When the
  window passes first, the install fails: ArtifactRollback leaves the new slot (marked bad, the old one to
  boot) and the device reboots into the old slot, which ArtifactVerifyRollbackReboot confirms again; the action
  ends ``rolled_back`` once it comes back.
- At the agent's start in the old slot (the bootloader fell back: the new OS did not come up): the install
  failed; the old slot is kept, no reboot is needed, and the action ends ``rolled_back``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import RAUC_ENV, SWUPDATE_ENV, Job, ModuleError, Reboot, UpdateModule

DEFAULT_TRIAL = 600.0
INSTALL_TIMEOUT = 3600.0
QUERY_TIMEOUT = 120.0
TAIL = 600
BOOTENV_GET_ENV = "FLEET_AGENT_BOOTENV_GET"
BOOTENV_SET_ENV = "FLEET_AGENT_BOOTENV_SET"
SLOT_VAR_ENV = "FLEET_AGENT_BOOT_SLOT_VAR"
SLOTS_ENV = "FLEET_AGENT_BOOT_SLOTS"
# Where the slot this boot started from is kept: on a tmpfs, so that a reboot clears it.
BOOTED_FILE_ENV = "FLEET_AGENT_BOOTED_SLOT_FILE"
DEFAULT_BOOTED_FILE = "/run/fleet-agent/booted-slot"
SUFFIXES = {".raucb": "rauc", ".swu": "swupdate"}


def _backend_name(job: Job) -> str:
    chosen = job.meta.get("backend", "")
    if not chosen:
        file_name = str(job.record["file_name"])
        chosen = next((b for suffix, b in SUFFIXES.items() if file_name.endswith(suffix)), "")
        if not chosen:
            raise ModuleError("the os-image module cannot tell the back end of this artifact: push a .raucb RAUC "
                              "bundle or a .swu SWUpdate image, or say it with --meta backend=rauc|swupdate")
    if chosen not in SUFFIXES.values():
        raise ModuleError(f"os-image back end {chosen!r} is not one this agent has (rauc, swupdate); push the "
                          "artifact with --meta backend=rauc or --meta backend=swupdate")
    return chosen


def _run(argv: list[str], timeout: float, hint: str, succeeded: Callable[[str], bool] | None = None) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ModuleError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    except OSError as e:
        raise ModuleError(f"cannot run {argv[0]}: {e.strerror}; {hint}") from None
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0 and not (succeeded and succeeded(out)):
        err = p.stderr.decode(errors="replace").strip()
        # rauc install's reason is on a LastError line; swupdate's on [ERROR] lines
        why = [line.strip() for line in out.splitlines() if line.startswith("LastError:") or "[ERROR]" in line]
        err = "; ".join([*why, err] if why else [err or out.strip()])[-TAIL:]
        raise ModuleError(f"{' '.join(argv)} exited with code {p.returncode}: {err} ({hint})")
    return out


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
    """RAUC's command line: the slots are RAUC's, the bootloader's state is changed through ``rauc status``."""

    def __init__(self) -> None:
        self.command = shlex.split(os.environ.get(RAUC_ENV) or "rauc")

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT) -> str:
        return _run([*self.command, *args], timeout, f"is `rauc service` running with the board's system.conf? "
                    f"set {RAUC_ENV} to RAUC's command if it is not `rauc`; see docs/agent.md \"os-image\"")

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

    def install(self, path: str, job: Job) -> str:
        self.run("install", path, timeout=INSTALL_TIMEOUT)
        return self.primary_bootname()

    def confirm(self) -> None:
        self.run("status", "mark-good", "booted")

    def leave_new(self, old: str) -> None:
        self.run("status", "mark-bad", "booted")
        self.run("status", "mark-active", "other")

    def keep_old(self, old: str) -> None:
        self.run("status", "mark-bad", "other")
        self.run("status", "mark-active", "booted")
        self.run("status", "mark-good", "booted")

    def primary_bootname(self) -> str:
        st = self.status()
        primary = st.get("boot_primary")
        for entry in st.get("slots") or []:
            for slot, info in entry.items():
                if slot == primary:
                    return str(info.get("bootname") or "")
        raise ModuleError(f"rauc status names no primary slot with a bootname after the install ({primary!r})")


def _swupdate_succeeded(out: str) -> bool:
    """Debian's swupdate 2022.12 exits 1 now and then (6 runs in 25 here) after reporting a successful install:
    its success line and no error line count; the slot variable is checked after it."""
    return "SWUPDATE successful" in out and "[ERROR]" not in out


class SwUpdate:
    """SWUpdate's command line and the bootloader environment (fw_printenv/fw_setenv, or the board's commands).

    The booted slot is the environment's slot variable (``FLEET_AGENT_BOOT_SLOT_VAR``, default ``slot``; one of
    ``FLEET_AGENT_BOOT_SLOTS``, default ``A,B``) as it was when this boot started — the bootloader's script
    boots it and switches it back when it falls back —, read once per boot and kept in a file on a tmpfs
    (``FLEET_AGENT_BOOTED_SLOT_FILE``, default ``/run/fleet-agent/booted-slot``), since an install changes it.
    ``swupdate -i <image> -e <set>,<other slot>`` installs the sw-description's collection of the other slot,
    whose ``bootenv`` sets the slot variable; SWUpdate's state marker puts ``ustate=1`` (on trial).
    Confirming is ``ustate=0``; leaving a new slot is the old slot back in the variable and ``ustate=3``.
    """

    def __init__(self) -> None:
        self.command = shlex.split(os.environ.get(SWUPDATE_ENV) or "swupdate")
        self.get_cmd = shlex.split(os.environ.get(BOOTENV_GET_ENV) or "fw_printenv -n")
        self.set_cmd = shlex.split(os.environ.get(BOOTENV_SET_ENV) or "fw_setenv")
        self.var = os.environ.get(SLOT_VAR_ENV) or "slot"
        self.slots = [x.strip() for x in (os.environ.get(SLOTS_ENV) or "A,B").split(",") if x.strip()]
        if len(self.slots) != 2:
            raise ModuleError(f"{SLOTS_ENV} must name two slots, e.g. A,B (it is {os.environ.get(SLOTS_ENV)!r})")

    def get(self, name: str) -> str:
        return _run([*self.get_cmd, name], QUERY_TIMEOUT, f"set {BOOTENV_GET_ENV} to the command that prints a "
                    "bootloader environment variable (fw_printenv -n from libubootenv-tool on U-Boot)").strip()

    def set(self, name: str, value: str) -> None:
        _run([*self.set_cmd, name, value], QUERY_TIMEOUT, f"set {BOOTENV_SET_ENV} to the command that sets a "
             "bootloader environment variable (fw_setenv on U-Boot)")

    def booted(self) -> str:
        kept = Path(os.environ.get(BOOTED_FILE_ENV) or DEFAULT_BOOTED_FILE)
        try:
            slot = kept.read_text().strip()
        except OSError:
            slot = self.get(self.var)
            if slot in self.slots:
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.with_name(kept.name + ".tmp").write_text(slot + "\n")
                os.replace(kept.with_name(kept.name + ".tmp"), kept)
        if slot not in self.slots:
            raise ModuleError(f"the bootloader environment's {self.var}={slot!r} is not one of the slots "
                              f"{','.join(self.slots)} ({SLOT_VAR_ENV}, {SLOTS_ENV})")
        return slot

    def install(self, path: str, job: Job) -> str:
        old = str(job.data["from"])
        other = self.slots[1 - self.slots.index(old)]
        selection = f"{job.meta.get('swupdate_set') or 'stable'},{other}"
        _run([*self.command, "-e", selection, "-i", path], INSTALL_TIMEOUT,
             f"check the image's sw-description has the collection {selection} for this board, and {SWUPDATE_ENV}",
             succeeded=_swupdate_succeeded)
        return self.get(self.var)  # the slot to boot next, as the collection's bootenv set it

    def confirm(self) -> None:
        self.set("ustate", "0")

    def leave_new(self, old: str) -> None:
        self.set(self.var, old)
        self.set("ustate", "3")

    def keep_old(self, old: str) -> None:
        self.set(self.var, old)
        self.set("ustate", "0")


def _back(job: Job) -> Rauc | SwUpdate:
    return SwUpdate() if job.data.get("backend") == "swupdate" else Rauc()


class OsImageModule(UpdateModule):
    name = "os-image"

    def supports_rollback(self, job: Job) -> bool:
        return True

    def needs_reboot(self, job: Job) -> Reboot:
        return Reboot.AUTOMATIC

    def state_Download(self, job: Job) -> None:
        job.data["backend"] = _backend_name(job)
        job.data["trial_seconds"] = _trial_seconds(job)
        images = list(job.files.iterdir())
        if len(images) != 1 or not images[0].is_file():
            raise ModuleError("an os-image artifact is one file: a RAUC bundle (.raucb) or a SWUpdate image (.swu)")
        job.data["from"] = _back(job).booted()

    def state_ArtifactInstall(self, job: Job) -> None:
        target = _back(job).install(str(next(job.files.iterdir())), job)
        if target == job.data["from"]:
            raise ModuleError(f"after the install the slot to boot is still the booted one ({target}): check the "
                              "board's slots (RAUC's system.conf, or the sw-description's bootenv)")
        job.data["to"] = target

    def awaits_server(self, job: Job) -> float | None:
        try:
            booted: str | None = _back(job).booted()
        except ModuleError:  # the back end is not up yet at the agent's start: the window runs all the same
            booted = None
        if "to" not in job.data or booted == job.data.get("from"):
            return None  # the bootloader fell back, or the install was cut: verify now (it fails)
        deadline = job.data.get("trial_deadline")
        if deadline is None:  # the first start in the new slot: the window opens
            deadline = job.data["trial_deadline"] = time.time() + float(job.data["trial_seconds"])
        return float(deadline) - time.time()

    def state_ArtifactVerifyReboot(self, job: Job) -> None:
        booted = _back(job).booted()
        if booted != job.data.get("to"):
            raise ModuleError(f"the device runs slot {booted} again, not the new slot {job.data.get('to')}: the "
                              "bootloader fell back (the new OS did not come up, or was not confirmed in time)")

    def state_ArtifactCommit(self, job: Job) -> None:
        _back(job).confirm()

    def rollback_needs_reboot(self, job: Job) -> bool:
        return "from" in job.data and _back(job).booted() != job.data["from"]

    def state_ArtifactRollback(self, job: Job) -> None:
        if "from" not in job.data:
            return  # Download did not finish: nothing changed
        back = _back(job)
        if back.booted() != job.data["from"]:  # in the new slot (a cut may have lost its name): leave it
            back.leave_new(job.data["from"])
        else:  # still (or again) in the old slot: it stays the one to boot, confirmed
            back.keep_old(job.data["from"])

    def state_ArtifactVerifyRollbackReboot(self, job: Job) -> None:
        back = _back(job)
        booted = back.booted()
        if booted != job.data.get("from"):
            raise ModuleError(f"after the rollback the device runs slot {booted}, not the previous slot "
                              f"{job.data.get('from')}")
        back.confirm()


__all__ = ["RAUC_ENV", "SWUPDATE_ENV", "OsImageModule"]
