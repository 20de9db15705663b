"""The sequence driver: one artifact through a module's states, with the state it is in kept on disk.

Per component, ``updates/<name>/`` holds ``job.json`` (the journal: the action, the artifact, the module, the
state entered last, written temp → fsync → rename before each state runs), ``tree/`` (the v3 File Tree the
module works in) and ``installed.json`` (what the last committed install left). A power cut at any step leaves
the journal on the state that was running, and :meth:`Driver.recover` (at the agent's start) finishes the job:

- in Download: nothing was changed; the tree is removed and the still-open action runs again from the start;
- in ArtifactInstall, ArtifactVerifyReboot or ArtifactCommit (a spontaneous reboot, as v3 calls it): the install
  is rolled back (ArtifactRollback, ArtifactFailure, Cleanup) when the module supports it, and the action runs
  again; a module without rollback gets ArtifactFailure, and the action ends failed;
- in ArtifactReboot (the reboot the module asked for): the sequence goes on with ArtifactVerifyReboot and
  ArtifactCommit, and the outcome waits in the journal for the action to come back; unless the module awaits
  the server (os-image): then the verify runs when the action comes back, and a trial window's timer fails
  and rolls back the install if it does not come back in time;
- in the rollback states: the rollback is carried on to its end, and its outcome waits likewise;
- in Cleanup: the install was committed; cleanup is finished and the action ends succeeded.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..durable import read_json, remove_tree, sweep, write_json
from ..unpack import UnpackError, extract, is_archive
from . import MODULE_NAME, Job, ModuleError, ModuleName, Reboot, State, UpdateModule, crashpoint, modules_dir

log = logging.getLogger(__name__)

Report = Callable[..., None]
CRASH_STEPS = ("mod-fetched", "mod-Download", "mod-ArtifactInstall", "mod-ArtifactReboot",
               "mod-ArtifactVerifyReboot", "mod-ArtifactCommit", "mod-ArtifactRollback", "mod-ArtifactFailure",
               "mod-directory-switching", "mod-container-switching")
# States after which the sequence waits for a reboot, then goes on (at start, or when the action is run again).
AFTER_REBOOT = {State.ARTIFACT_REBOOT.value: State.ARTIFACT_VERIFY_REBOOT,
                State.ARTIFACT_ROLLBACK_REBOOT.value: State.ARTIFACT_VERIFY_ROLLBACK_REBOOT}
# States in which a power cut means the install did not finish: it is undone.
UNDONE_BY_A_CUT = (State.ARTIFACT_INSTALL.value, State.ARTIFACT_VERIFY_REBOOT.value, State.ARTIFACT_COMMIT.value)
FINAL = ("succeeded", "failed", "rolled_back")
RECORD_FIELDS = ("name", "version", "kind", "sha256", "size", "file_name", "manifest", "signature")


def _noop_report(state: str, message: str = "", progress: int = 0, result: dict[str, Any] | None = None) -> None:
    pass


class Driver:
    """Runs artifacts of every module through the sequence; ``app``, the built-in module that needs the agent's
    supervisor, is given by the Executor."""

    def __init__(self, state_dir: Path, device_type: str, *, modules: Path | None = None,
                 reboot: Callable[[], None], app: UpdateModule | None = None) -> None:
        self.root = Path(state_dir) / "updates"
        self.app = app
        self.device_type = device_type
        self.modules = modules if modules is not None else modules_dir()
        self._reboot = reboot
        self.rebooting = False  # a reboot was asked for: nothing more is done until it happens
        # Held by install and by a trial window's end (a timer thread), so one decides what happens to a job.
        self._lock = threading.RLock()
        self._timers: dict[str, threading.Timer] = {}

    # --- modules -------------------------------------------------------------------------------
    def resolve(self, name: str) -> UpdateModule:
        if name == ModuleName.APP.value and self.app is not None:
            return self.app
        if name == ModuleName.FILE.value:
            from .files import FileModule
            return FileModule()
        if name == ModuleName.DIRECTORY.value:
            from .files import DirectoryModule
            return DirectoryModule()
        if name == ModuleName.CONTAINER.value:
            from .container import ContainerModule
            return ContainerModule()
        if name == ModuleName.OS_IMAGE.value:
            from .osimage import OsImageModule
            return OsImageModule()
        if not MODULE_NAME.ok(name) or name == ModuleName.APP.value:
            raise ModuleError(f"{name!r} is not a module this part of the agent runs")
        from .external import ExternalModule
        exe = self.modules / name
        if not exe.is_file() or not exe.stat().st_mode & 0o111:
            raise ModuleError(f"this device has no update module {name!r}: put an executable named {name} in "
                              f"{self.modules} (FLEET_AGENT_MODULES_DIR), or deploy to devices whose inventory "
                              "lists it")
        return ExternalModule(exe)

    # --- where things are ----------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.root / name

    def journal(self, name: str) -> dict[str, Any] | None:
        j = read_json(self.folder(name) / "job.json")
        return j if isinstance(j, dict) else None

    def installed(self, name: str) -> dict[str, Any] | None:
        i = read_json(self.folder(name) / "installed.json")
        return i if isinstance(i, dict) else None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def components(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            inst, j = self.installed(name), self.journal(name)
            if inst is None and j is None:
                continue
            version = str((inst or {}).get("version") or (j or {}).get("record", {}).get("version", ""))
            busy = j is not None and not j.get("outcome")
            comp = {"name": name, "version": version, "state": "installing" if busy else "installed",
                    "health": "" if busy else "healthy", "restarts": 0}
            if not busy and (inst or {}).get("module") == ModuleName.CONTAINER.value:
                comp.update(self._container_status(name))
            out.append(comp)
        return out

    def _container_status(self, name: str) -> dict[str, Any]:
        """Live state, health and restarts of an installed container release (the container module is loaded
        only on a device that has one)."""
        from .container import ContainerModule
        try:
            st = ContainerModule().status(self.folder(name))
        except ModuleError as e:
            log.warning("cannot read the state of %s's containers: %s", name, e)
            return {"state": "failed", "health": "unhealthy"}
        return st or {}

    def _save(self, j: dict[str, Any]) -> None:
        write_json(self.folder(j["record"]["name"]) / "job.json", j)

    def _enter(self, job: Job, state: State) -> None:
        job.journal["state"] = state.value
        self._save(job.journal)

    def _job(self, j: dict[str, Any], report: Report = _noop_report, *, at_start: bool = False) -> Job:
        return Job(self.folder(j["record"]["name"]) / "tree", j["record"], json.loads(j["record"]["manifest"]), j,
                   report=report, save=lambda: self._save(j), at_start=at_start)

    # --- at start ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo what a power cut or crash interrupted (see the module's docstring)."""
        for name in self.names():
            sweep(self.folder(name))
            j = self.journal(name)
            if j is None or j.get("outcome"):
                continue
            try:
                self._resume(j, _noop_report, at_start=True)
            except Exception:  # one broken module must not keep the agent down; its action reports it
                log.exception("cannot recover the install of %s", name)
        for name in self.names():  # containers do not come back by themselves after a reboot without systemd
            j = self.journal(name)
            if (self.installed(name) or {}).get("module") == ModuleName.CONTAINER.value and (
                    j is None or j.get("outcome")):  # not in the middle of an install (one waiting for a reboot)
                from .container import start_installed
                try:
                    start_installed(self.folder(name))
                except ModuleError as e:
                    log.warning("cannot start the containers of %s: %s", name, e)

    def _resume(self, j: dict[str, Any], report: Report, at_start: bool) -> None:
        state = j.get("state")
        job = self._job(j, report, at_start=at_start)
        try:
            module = self.resolve(j["module"])
        except ModuleError as e:
            self._finish(job, None, "failed", f"cannot go on with the install: {e}", report)
            return
        if state == State.DOWNLOAD.value:
            self._finish(job, module, None, "", report)  # nothing changed: the action runs again
        elif state in AFTER_REBOOT:
            if state == State.ARTIFACT_REBOOT.value:
                left = module.awaits_server(job) if at_start else None
                if left is not None:  # verified once the action comes back from the server, or rolled back
                    self._save(j)
                    self._arm(job.name, left)
                    return
                self._cancel(job.name)
                self._after_reboot(job, module, report)
            else:
                self._after_rollback_reboot(job, module, report)
        elif state in UNDONE_BY_A_CUT and not j.get("problem"):
            self._fail(job, module, f"the agent stopped during {state} (a power cut or a crash)", report,
                       retry=at_start)
        elif state == State.CLEANUP.value:
            self._finish(job, module, "succeeded", self._success(job), report)
        else:  # in the failure path: carry it to its end
            self._fail(job, module, str(j.get("problem") or f"the agent stopped during {state}"), report,
                       resume=state)

    # --- a trial window (awaits_server) ----------------------------------------------------------
    def _arm(self, name: str, seconds: float) -> None:
        self._cancel(name)
        t = threading.Timer(max(seconds, 0.0), self.trial_expired, args=(name,))
        t.daemon = True
        self._timers[name] = t
        t.start()

    def _cancel(self, name: str) -> None:
        t = self._timers.pop(name, None)
        if t is not None:
            t.cancel()

    def reboot(self) -> None:
        self.rebooting = True
        self._reboot()

    def close(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    def trial_expired(self, name: str) -> None:
        """The agent did not reach the server in the trial window: the install fails and is rolled back (the
        module's rollback, then the rollback reboot); the outcome waits for the action."""
        with self._lock:
            self._timers.pop(name, None)
            j = self.journal(name)
            if self.rebooting or j is None or j.get("outcome") or j.get("state") != State.ARTIFACT_REBOOT.value:
                return  # verified meanwhile, or gone
            job = self._job(j)
            try:
                module = self.resolve(j["module"])
            except ModuleError as e:
                self._finish(job, None, "failed", f"cannot go on with the install: {e}", _noop_report)
                return
            seconds = j.get("data", {}).get("trial_seconds")
            self._fail(job, module, "the new version did not reach the server within its trial window"
                       + (f" ({seconds} s)" if seconds else ""), _noop_report)

    # --- install ---------------------------------------------------------------------------------
    def install(self, action: dict[str, Any], art: dict[str, Any], manifest: dict[str, Any], module_name: str,
                fetch: Callable[[], Path], report: Report, older: Callable[[str, str], bool]) -> None:
        with self._lock:
            if self.rebooting:
                report("installing", "waiting for the device to reboot", 60)
                return
            self._install(action, art, manifest, module_name, fetch, report, older)

    def _install(self, action: dict[str, Any], art: dict[str, Any], manifest: dict[str, Any], module_name: str,
                 fetch: Callable[[], Path], report: Report, older: Callable[[str, str], bool]) -> None:
        name = str(art["name"])
        j = self.journal(name)
        if j is not None:
            if j.get("action") != action.get("id"):
                # A sequence of an action that is gone: finish it quietly first.
                if not j.get("outcome"):
                    self._resume(j, _noop_report, at_start=False)
                (self.folder(name) / "job.json").unlink(missing_ok=True)
            else:
                if not j.get("outcome"):
                    ended: list[str] = []

                    def tracking(state: str, message: str = "", progress: int = 0,
                                 result: dict[str, Any] | None = None) -> None:
                        report(state, message, progress)
                        if state in FINAL:
                            ended.append(state)

                    self._resume(j, tracking, at_start=False)
                    if ended or self.journal(name) is not None:
                        return  # finished, or waiting for a reboot
                    j = None  # undone: install again
                if j is not None and j.get("outcome"):
                    state, message = j["outcome"]
                    (self.folder(name) / "job.json").unlink(missing_ok=True)
                    report(state, message, 100)
                    return
        inst = self.installed(name) or {}
        if inst.get("module") not in (None, module_name):
            raise ModuleError(f"{name} is installed by the {inst['module']} module on this device; an artifact for "
                              f"the {module_name} module needs another name")
        module = self.resolve(module_name)  # before anything is downloaded
        version = str(art["version"])
        if (module.done_when_installed and inst.get("version") == version
                and inst.get("sha256") == art["sha256"]):
            report("succeeded", f"{name} {version} is already installed by the {module_name} module", 100)
            return
        cur = module.installed_version(name, inst)
        if cur and cur != version and older(version, cur) and not action.get("rollback"):
            raise ModuleError(f"{name} {version} is older than the installed {cur}; use a rollback to go back "
                              "to an older version")
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        j = {"action": action.get("id"), "module": module_name, "state": State.DOWNLOAD.value,
             "record": {k: art[k] for k in RECORD_FIELDS}, "token": secrets.token_hex(4),
             "previous_version": cur or None, "rollback_action": bool(action.get("rollback")), "data": {}}
        self._save(j)
        job = self._job(j, report)
        try:
            # The payload is downloaded unless the module still has this very version on the device.
            path = None if module.on_device(job) else fetch()
        except BaseException:  # nothing changed: no sequence to finish
            self._finish(job, None, None, "", _noop_report)
            raise
        crashpoint("mod-fetched")
        try:
            self._make_tree(job, path, cur)
        except (UnpackError, OSError) as e:
            self._finish(job, module, "failed", f"refused: {e}", report)
            return
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        report("installing", f"{module_name} module: {State.DOWNLOAD.value}", 10)
        try:
            module.call(State.DOWNLOAD, job)
            crashpoint("mod-Download")
            j["rollback"] = module.supports_rollback(job)
        except ModuleError as e:
            self._finish(job, module, "failed", module.problem(State.DOWNLOAD, e), report)
            return
        if j["rollback_action"] and not j["rollback"]:
            self._finish(job, module, "failed", f"the {module_name} module does not support rollback, so a "
                         "rollback cannot use it; deploy the version you want to go back to instead", report)
            return
        if not self._step(job, module, State.ARTIFACT_INSTALL, report, 30):
            return
        try:
            reboot = module.needs_reboot(job)
        except ModuleError as e:
            self._fail(job, module, str(e), report)
            return
        j["reboot"] = reboot.value
        if reboot is Reboot.NO:
            self._commit(job, module, report)
            return
        if reboot is Reboot.AUTOMATIC:
            self._enter(job, State.ARTIFACT_REBOOT)
            report("installing", f"{module_name} module: rebooting the device to finish the install", 60)
            self.reboot()  # the sequence goes on at the agent's next start
            return
        if self._step(job, module, State.ARTIFACT_REBOOT, report, 60):
            self._after_reboot(job, module, report)

    def _step(self, job: Job, module: UpdateModule, state: State, report: Report, progress: int | None) -> bool:
        """Enter ``state`` (journaled first), report it (with ``progress``, unless None) and run it; when it
        fails, the install fails (rolled back where the module can) and the answer is False."""
        self._enter(job, state)
        if progress is not None:
            report("installing", f"{job.journal['module']} module: {state.value}", progress)
        try:
            module.call(state, job)
            crashpoint(f"mod-{state.value}")
        except ModuleError as e:
            self._fail(job, module, module.problem(state, e), report)
            return False
        return True

    def _after_reboot(self, job: Job, module: UpdateModule, report: Report) -> None:
        if self._step(job, module, State.ARTIFACT_VERIFY_REBOOT, report, 70):
            self._commit(job, module, report)

    def _commit(self, job: Job, module: UpdateModule, report: Report) -> None:
        if not self._step(job, module, State.ARTIFACT_COMMIT, report, None):
            return
        j = job.journal
        write_json(self.folder(job.name) / "installed.json", {
            "module": j["module"], "version": job.version, "sha256": job.record["sha256"],
            "previous_version": j.get("previous_version"), "data": j.get("data") or {}})
        j["state"] = State.CLEANUP.value
        self._save(j)
        self._finish(job, module, "succeeded", self._success(job), report)

    def _success(self, job: Job) -> str:
        was = job.journal.get("previous_version")
        return (f"{job.name} {job.version} is installed by the {job.journal['module']} module"
                + (f" (was {was})" if was and was != job.version else ""))

    # --- failure ---------------------------------------------------------------------------------
    def _fail(self, job: Job, module: UpdateModule, problem: str, report: Report, *, resume: str | None = None,
              retry: bool = False) -> None:
        """ArtifactRollback (and its reboot) when the module supports it, ArtifactFailure, Cleanup.

        ``retry``: the install was cut, not refused; once undone, the action runs again from the start."""
        j = job.journal
        if not retry or not j.get("rollback"):  # a cut that cannot be undone ends the action failed
            j["problem"] = problem
        rolled = bool(j.get("rollback"))
        order = [State.ARTIFACT_ROLLBACK.value, State.ARTIFACT_FAILURE.value]
        start = order.index(resume) if resume in order else 0
        if rolled and start == 0:
            self._enter(job, State.ARTIFACT_ROLLBACK)
            report("installing", f"{problem}; {j['module']} module: {State.ARTIFACT_ROLLBACK.value}", 80)
            try:
                module.call(State.ARTIFACT_ROLLBACK, job)
                crashpoint("mod-ArtifactRollback")
            except ModuleError as e:
                problem, rolled = f"{problem}; then {State.ARTIFACT_ROLLBACK.value} failed too: {e}", False
                j["problem"] = problem
                j["rollback"] = False
            else:
                reboot = j.get("reboot")
                needed = module.rollback_needs_reboot(job)
                if needed is not None:  # the module knows better (a cut may have come before NeedsArtifactReboot)
                    reboot = (reboot or Reboot.AUTOMATIC.value) if needed else Reboot.NO.value
                if reboot in (Reboot.YES.value, Reboot.AUTOMATIC.value):
                    self._enter(job, State.ARTIFACT_ROLLBACK_REBOOT)
                    if reboot == Reboot.AUTOMATIC.value:
                        report("installing", f"{problem}; rebooting into the previous version", 85)
                        self.reboot()
                        return
                    try:
                        module.call(State.ARTIFACT_ROLLBACK_REBOOT, job)
                    except ModuleError as e:
                        problem = f"{problem}; then {State.ARTIFACT_ROLLBACK_REBOOT.value} failed: {e}"
                        j["problem"] = problem
                    self._after_rollback_reboot(job, module, report)
                    return
        self._failure(job, module, report)

    def _after_rollback_reboot(self, job: Job, module: UpdateModule, report: Report) -> None:
        self._enter(job, State.ARTIFACT_VERIFY_ROLLBACK_REBOOT)
        try:
            module.call(State.ARTIFACT_VERIFY_ROLLBACK_REBOOT, job)
        except ModuleError as e:
            job.journal["problem"] = f"{job.journal.get('problem')}; {State.ARTIFACT_VERIFY_ROLLBACK_REBOOT.value} " \
                                     f"failed: {e} (the device may be in neither version: check it)"
            job.journal["rollback"] = False
        self._failure(job, module, report)

    def _failure(self, job: Job, module: UpdateModule, report: Report) -> None:
        j = job.journal
        self._enter(job, State.ARTIFACT_FAILURE)
        try:
            module.call(State.ARTIFACT_FAILURE, job)
            crashpoint("mod-ArtifactFailure")
        except ModuleError as e:
            log.warning("%s: %s failed: %s", job.name, State.ARTIFACT_FAILURE.value, e)
        problem = j.get("problem")
        if problem is None:  # a cut install, undone: the action runs again
            self._finish(job, module, None, "", report)
            return
        if j.get("rollback"):
            was = j.get("previous_version")
            self._finish(job, module, "rolled_back", f"{problem}; rolled back to "
                         f"{'version ' + was if was else 'what was there before'}", report)
        else:
            self._finish(job, module, "failed", f"{problem}; the {j['module']} module does not roll back, so "
                         f"{job.name} may be half installed: deploy a version that works", report)

    def _finish(self, job: Job, module: UpdateModule | None, final: str | None, message: str,
                report: Report) -> None:
        """Cleanup, then remove the tree; the outcome waits in the journal until its action takes it."""
        j = job.journal
        j["state"] = State.CLEANUP.value
        self._save(j)
        if module is not None and job.tree.is_dir():
            try:
                module.call(State.CLEANUP, job)
            except ModuleError as e:
                log.warning("%s: %s failed: %s", job.name, State.CLEANUP.value, e)
        remove_tree(job.tree)
        if final is not None and module is not None:
            final, message = module.outcome(job, final, message)
        if final is not None and report is _noop_report:
            j["outcome"] = [final, message]
            self._save(j)
            return
        folder = self.folder(job.name)
        (folder / "job.json").unlink(missing_ok=True)
        if not any(folder.iterdir()):  # a first install that did not happen (module.log, if any, stays)
            remove_tree(folder)
        if final is not None:
            report(final, message, 100)

    # --- the v3 File Tree ------------------------------------------------------------------------------
    def _make_tree(self, job: Job, path: Path | None, current: str) -> None:
        """The v3 File Tree; its files/ stays empty when the module had the payload on the device already."""
        tree = job.tree
        remove_tree(tree)
        for sub in ("header", "files", "tmp"):
            (tree / sub).mkdir(parents=True)
        name, module = job.name, job.journal["module"]
        artifact_name = f"{name}-{job.version}"
        header = {
            "artifact_name": artifact_name, "artifact_group": name, "payload_type": module,
            "header-info": json.dumps({"payloads": [{"type": module}],
                                       "artifact_provides": {"artifact_name": artifact_name, "artifact_group": name},
                                       "artifact_depends": {"device_type": job.manifest.get("device_types") or []}}),
            "type-info": json.dumps({"type": module, "artifact_provides": {f"{module}.{name}.version": job.version},
                                     "artifact_depends": {}, "clears_artifact_provides": [f"{module}.{name}.*"]}),
            "meta-data": json.dumps(job.meta),
        }
        for file_name, text in header.items():
            (tree / "header" / file_name).write_text(text + ("\n" if not text.startswith("{") else ""))
        top = {"version": "3", "current_artifact_name": f"{name}-{current}" if current else "",
               "current_artifact_group": name if current else "", "current_device_type": self.device_type}
        for file_name, text in top.items():
            (tree / file_name).write_text(text + "\n")
        file_name = str(job.record["file_name"])
        if path is None:
            return
        if is_archive(file_name):
            extract(path, file_name, job.files)
        else:
            shutil.copyfile(path, job.files / file_name)


__all__ = ["CRASH_STEPS", "Driver"]
