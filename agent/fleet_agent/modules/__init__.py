"""Update modules: how an artifact is installed, one module per kind of payload (docs/agent.md "Update modules").

Every install of an artifact goes through the same sequence of states, named as in Mender's Update Module
protocol v3 so that a v3 module runs unchanged: Download → ArtifactInstall → (ArtifactReboot →
ArtifactVerifyReboot when the module needs a reboot) → ArtifactCommit → Cleanup, or on a failure
ArtifactRollback (→ ArtifactRollbackReboot → ArtifactVerifyRollbackReboot) → ArtifactFailure → Cleanup.
:mod:`.sequence` drives it and keeps the state it is in on disk; a module only carries out states.

Built-in modules are one closed list (:class:`ModuleName`); any other name is an external module, an
executable of that name in the modules directory (``FLEET_AGENT_MODULES_DIR``). This package's top is small
on purpose: the inventory lists the modules at every check-in without loading any of them.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..names import Kind

MODULES_DIR_ENV = "FLEET_AGENT_MODULES_DIR"
# The container module's runtime: a name or a path; unset, podman, else docker (docs/agent.md "The container module").
CONTAINER_RUNTIME_ENV = "FLEET_AGENT_CONTAINER_RUNTIME"
CONTAINER_RUNTIMES = ("podman", "docker")
# Test hook: FLEET_AGENT_CRASH_AT=<step> makes the agent die at that step, as a power cut would.
CRASH_ENV = "FLEET_AGENT_CRASH_AT"
CRASH_EXIT = 86
DEFAULT_MODULES_DIR = "/usr/share/fleet-agent/modules"
# The name of an external module: a file name in the modules directory; the server's rule (core.names).
MODULE_NAME = Kind("module name", r"[a-z0-9][a-z0-9_.-]{0,63}",
                   "1-64 characters of a-z 0-9 _ . -, starting with a letter or digit")


class ModuleName(str, enum.Enum):
    """The built-in update modules (docs/agent.md "Built-in modules"; the server's artifacts.catalog
    BUILTIN_MODULES holds the same names)."""

    APP = "app"  # an executable or archive plus a run command, under the agent's supervisor
    FILE = "file"  # one file put in place at meta path
    DIRECTORY = "directory"  # a file tree put in place as the folder at meta path
    CONTAINER = "container"  # a compose spec (a subset) and its images, run through podman or docker
    OS_IMAGE = "os-image"  # a whole-OS A/B update through RAUC or SWUpdate, confirmed once back online


class State(str, enum.Enum):
    """The states and queries of Mender's Update Module protocol v3, as a module is called with them."""

    DOWNLOAD = "Download"
    ARTIFACT_INSTALL = "ArtifactInstall"
    NEEDS_ARTIFACT_REBOOT = "NeedsArtifactReboot"
    ARTIFACT_REBOOT = "ArtifactReboot"
    ARTIFACT_VERIFY_REBOOT = "ArtifactVerifyReboot"
    ARTIFACT_COMMIT = "ArtifactCommit"
    SUPPORTS_ROLLBACK = "SupportsRollback"
    ARTIFACT_ROLLBACK = "ArtifactRollback"
    ARTIFACT_ROLLBACK_REBOOT = "ArtifactRollbackReboot"
    ARTIFACT_VERIFY_ROLLBACK_REBOOT = "ArtifactVerifyRollbackReboot"
    ARTIFACT_FAILURE = "ArtifactFailure"
    CLEANUP = "Cleanup"


class Reboot(str, enum.Enum):
    """A module's answer to NeedsArtifactReboot."""

    NO = "No"
    YES = "Yes"  # the module reboots (or resets a peripheral) itself in ArtifactReboot
    AUTOMATIC = "Automatic"  # the agent reboots the device (FLEET_AGENT_REBOOT_CMD) instead of ArtifactReboot


class ModuleError(Exception):
    """A state failed; the message says what happened and, where it can, what to do."""


class Job:
    """What a module is given for one install: the artifact, its metadata and the v3 File Tree.

    ``tree`` is the folder a v3 module gets as its second argument: ``header/`` (the artifact's metadata),
    ``files/`` (its payload files: the file, or an archive's members) and ``tmp/``.
    """

    def __init__(self, tree: Path, record: dict[str, Any], manifest: dict[str, Any], journal: dict[str, Any], *,
                 report: Callable[..., None] = lambda *a, **k: None, save: Callable[[], None] = lambda: None,
                 at_start: bool = False) -> None:
        self.tree = tree
        self.record = record  # name, version, kind, sha256, size, file_name, manifest, signature
        self.manifest = manifest
        self.journal = journal  # the sequence's durable record; modules may keep small values in journal["data"]
        self.report = report  # the action's progress: report("installing", message, percent)
        self.save = save  # write the journal (with data) to disk now, e.g. to record a point passed
        self.at_start = at_start  # carried on at the agent's start, after a power cut or crash

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def version(self) -> str:
        return str(self.record["version"])

    @property
    def files(self) -> Path:
        return self.tree / "files"

    @property
    def tmp(self) -> Path:
        return self.tree / "tmp"

    @property
    def meta(self) -> dict[str, str]:
        m = self.manifest.get("meta") or {}
        return {str(k): str(v) for k, v in m.items()} if isinstance(m, dict) else {}

    @property
    def data(self) -> dict[str, Any]:
        d: dict[str, Any] = self.journal.setdefault("data", {})
        return d


class UpdateModule:
    """One kind of payload. The sequence driver calls these in protocol order; each raises ModuleError to fail.

    Defaults are the protocol's: a state a module has nothing to do in succeeds, no reboot, no rollback.
    """

    name: str = ""
    # Whether an install of the version (and bytes) the module installed last succeeds at once, changing nothing.
    done_when_installed = True

    def supports_rollback(self, job: Job) -> bool:
        return False

    def installed_version(self, name: str, installed: dict[str, Any]) -> str:
        """The installed version of component ``name`` (``installed``: what its last committed install left)."""
        return str(installed.get("version") or "")

    def on_device(self, job: Job) -> bool:
        """Before the download: True when the module still has this version on the device, so that nothing is
        downloaded (files/ stays empty)."""
        return False

    def problem(self, state: State, error: ModuleError) -> str:
        """How the failure of ``state`` is reported."""
        return f"{state.value} failed: {error}"

    def outcome(self, job: Job, final: str, message: str) -> tuple[str, str]:
        """The final state and message of an install that ended (the sequence's words, which a module may
        tell better: what it went back to, and how that went)."""
        return final, message

    def needs_reboot(self, job: Job) -> Reboot:
        return Reboot.NO

    def awaits_server(self, job: Job) -> float | None:
        """At the agent's start after ArtifactReboot: ``None`` to verify at once, or the seconds left in which
        the agent must reach the server again (the action comes back) before ArtifactVerifyReboot runs; when
        they pass first, the install fails and is rolled back (os-image's trial window)."""
        return None

    def rollback_needs_reboot(self, job: Job) -> bool | None:
        """After ArtifactRollback: ``None`` to reboot as the install did (NeedsArtifactReboot), or whether to
        reboot (os-image: only while the device runs the new slot, not after the bootloader fell back)."""
        return None

    def call(self, state: State, job: Job) -> None:
        """Carry out ``state`` (one of the non-query states)."""
        method = getattr(self, "state_" + state.value, None)
        if method is not None:
            try:
                method(job)
            except OSError as e:  # a full disk, a read-only file system, a permission
                raise ModuleError(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")) from None


def crashpoint(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os._exit(CRASH_EXIT)


def modules_dir(env: dict[str, str] | None = None) -> Path:
    e = os.environ if env is None else env
    return Path(e.get(MODULES_DIR_ENV) or DEFAULT_MODULES_DIR)


def external_names(folder: Path) -> list[str]:
    """The executables in the modules directory whose names are module names (never a built-in's)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    builtin = {m.value for m in ModuleName}
    return [e.name for e in entries if MODULE_NAME.ok(e.name) and e.name not in builtin and e.is_file()
            and os.access(e.path, os.X_OK)]


def container_runtime(env: dict[str, str] | None = None) -> str | None:
    """The path of the container runtime the container module would use, or None when the device has none."""
    e = os.environ if env is None else env
    wanted = e.get(CONTAINER_RUNTIME_ENV, "")
    for candidate in ([wanted] if wanted else CONTAINER_RUNTIMES):
        found = shutil.which(candidate)
        if found:
            return found
    return None


# The os-image module's tools, when not `rauc` / `swupdate` on PATH (docs/agent.md, "os-image").
RAUC_ENV = "FLEET_AGENT_RAUC"
SWUPDATE_ENV = "FLEET_AGENT_SWUPDATE"


def os_image_tool() -> str | None:
    """RAUC's or SWUpdate's command when either is installed (FLEET_AGENT_RAUC / FLEET_AGENT_SWUPDATE name them
    when they are not ``rauc`` / ``swupdate`` on PATH)."""
    for env, default in ((RAUC_ENV, "rauc"), (SWUPDATE_ENV, "swupdate")):
        command = (os.environ.get(env) or default).split()
        if command and shutil.which(command[0]):
            return command[0]
    return None


def available(folder: Path | None = None) -> list[str]:
    """Every module this agent can install with: the built-ins (``container`` only with a runtime, ``os-image``
    only with RAUC or SWUpdate, so that the server refuses a deploy to a device that cannot install it), then the
    external ones."""
    needs = {ModuleName.CONTAINER: container_runtime, ModuleName.OS_IMAGE: os_image_tool}
    builtin = [m.value for m in ModuleName if m not in needs or needs[m]()]
    return [*builtin, *external_names(modules_dir() if folder is None else folder)]


__all__ = ["CONTAINER_RUNTIMES", "CONTAINER_RUNTIME_ENV", "CRASH_ENV", "CRASH_EXIT", "DEFAULT_MODULES_DIR",
           "MODULES_DIR_ENV", "MODULE_NAME", "RAUC_ENV", "SWUPDATE_ENV", "Job", "ModuleError", "ModuleName",
           "Reboot", "State", "UpdateModule", "available", "container_runtime", "crashpoint", "external_names",
           "modules_dir", "os_image_tool"]
