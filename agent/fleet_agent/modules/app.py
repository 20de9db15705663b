"""The built-in ``app`` module: an executable, or an archive plus a run command, under the agent's supervisor.

An app lives in ``apps/<name>/`` (see :mod:`fleet_agent.apps`): one folder per kept ``<version>``, a ``current``
symlink naming the version that runs, and ``state.json``. Through the sequence (:mod:`.sequence`):

- Download: the payload (from the v3 File Tree's ``files/``) is put in place as ``<version>/`` with its signed
  manifest, in one rename; a version still on the device is not downloaded again (:meth:`AppModule.on_device`).
  The install spec is checked here, and what to go back to (the running version, else the previous one) noted;
- ArtifactInstall: ``current`` is switched to the new version, which is started and watched through its health
  window (the install spec's ``health``): an exit or a failed probe fails the install;
- ArtifactCommit: ``state.json`` names the new version, healthy; versions but it and the one to go back to go;
- ArtifactRollback: the new version is stopped, ``current`` goes back and that version is started and watched
  again (its health is reported); with nothing to go back to, the app stays stopped and failed. After a power cut
  (the journal is on ArtifactInstall) it is the same, without the watch: a first install that had switched keeps
  running, unconfirmed, until the action runs again.

Every step is a rename or a journal write, so a power cut leaves ``current`` on a complete version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from ..durable import remove_tree, switch_link
from ..names import VERSION
from ..supervisor import ProcessManager, ProcessSpec
from ..unpack import UnpackError, place
from . import Job, ModuleError, ModuleName, State, UpdateModule, crashpoint

# The app's log lines keep the logger they always had (operators filter on it).
log = logging.getLogger("fleet_agent.apps")


class Apps(Protocol):
    """What the module needs of the Executor: where apps live, their supervisor, and the run spec and health
    watch it shares with the restart and config actions."""

    apps_dir: Path
    sup: ProcessManager

    def app(self, name: str) -> Any: ...
    def spec(self, app: Any, version: str) -> ProcessSpec: ...
    def watch(self, app: Any, version: str, manifest: dict[str, Any], report: Any) -> str | None: ...


class AppModule(UpdateModule):
    name = ModuleName.APP.value
    done_when_installed = False  # deploying the running version again restarts it and watches it again

    def __init__(self, apps: Apps) -> None:
        self.apps = apps

    def supports_rollback(self, job: Job) -> bool:
        return True

    def installed_version(self, name: str, installed: dict[str, Any]) -> str:
        return str(self.apps.app(name).current_version() or "")

    def on_device(self, job: Job) -> bool:
        app = self.apps.app(job.name)
        have = app.installed(job.version)
        if have is not None and have.get("sha256") == job.record["sha256"]:
            job.data["kept"] = True
            return True
        if have is not None and app.current_version() == job.version:
            raise ModuleError(f"{app.name} {job.version} is installed with other contents (SHA-256 "
                              f"{have.get('sha256')}); versions are immutable, deploy a new version")
        return False

    def problem(self, state: State, error: ModuleError) -> str:
        return str(error)  # the app's errors say what failed themselves

    # --- the states ---------------------------------------------------------------------------------
    def state_Download(self, job: Job) -> None:
        app = self.apps.app(job.name)
        if not job.data.get("kept"):
            self._place(job, app)
        self.apps.spec(app, job.version)  # a bad install spec fails here, before anything is switched
        st = app.state()
        cur = app.current_version()
        restore = None
        if cur and cur != job.version and st.get("state") != "failed" and app.installed(cur):
            restore = {"version": cur, "previous_version": st.get("previous_version"), "health": st.get("health") or ""}
        elif st.get("previous_version") and app.installed(str(st["previous_version"])):
            restore = {"version": st["previous_version"], "previous_version": None}
        job.data["restore"] = restore

    def _place(self, job: Job, app: Any) -> None:
        """The payload (the File Tree's files/) as ``<version>/`` beside the others, with its signed record."""
        try:
            place(job.files, app.root, job.version, job.record, after_unpack=lambda: crashpoint("unpacked"))
        except UnpackError as e:
            raise ModuleError(f"refused: {e}") from None
        crashpoint("placed")

    def state_ArtifactInstall(self, job: Job) -> None:
        app, version = self.apps.app(job.name), job.version
        crashpoint("intent")
        if app.current_version() != version:
            switch_link(app.current, version)
        crashpoint("switched")
        job.report("installing", f"starting {app.name} {version}", 0)
        self.apps.sup.start(self.apps.spec(app, version))
        crashpoint("started")
        problem = self.apps.watch(app, version, job.manifest, job.report)
        if problem is not None:
            raise ModuleError(f"{app.name} {version} failed its health check ({problem})")

    def state_ArtifactCommit(self, job: Job) -> None:
        app, version = self.apps.app(job.name), job.version
        restore = job.data.get("restore")
        back = restore["version"] if restore else None
        app.save({"version": version, "previous_version": back, "state": "running", "health": "healthy",
                  "restarts": 0, "last_error": ""})
        job.data["committed"] = True
        job.save()
        crashpoint("committed")
        for p in app.root.iterdir():  # one version to go back to is kept
            if p.is_dir() and not p.is_symlink() and p.name not in (version, back) and VERSION.ok(p.name):
                remove_tree(p)

    def state_ArtifactRollback(self, job: Job) -> None:
        if job.data.get("committed"):
            return  # a cut after the commit: the new version is the installed one, nothing to undo
        app, version = self.apps.app(job.name), job.version
        problem = job.journal.get("problem")  # None: a power cut, not a failure (the action runs again)
        restore = job.data.get("restore")
        self.apps.sup.stop(app.name)
        crashpoint("reverting")
        if restore is not None and app.installed(str(restore["version"])):
            back = str(restore["version"])
            if problem is None:
                log.info("%s: the install of %s was interrupted; going back to %s", app.name, version, back)
            else:
                log.info("%s; rolling back to %s", problem, back)
            switch_link(app.current, back)
            crashpoint("reverted")
            app.save({"version": back, "previous_version": restore.get("previous_version"), "state": "running",
                      "health": (restore.get("health") or "") if problem is None else "", "restarts": 0,
                      "last_error": problem or f"the install of {version} was interrupted"})
            self.apps.sup.start(self.apps.spec(app, back))
            if version != back:
                remove_tree(app.dir(version))
            job.data["went_back"] = back
            if problem is not None and not job.at_start:
                job.data["again"] = self._check_restored(job, app, back)
            return
        link = app.current_version()
        if link is None:
            remove_tree(app.root)  # a first install that never switched: nothing was installed
        elif problem is None and app.installed(link):
            # A first install cut after the switch: the only version there is, complete, so it runs, unconfirmed
            # until the action (run again) has watched it.
            app.save({"version": link, "previous_version": None, "state": "running", "health": "", "restarts": 0,
                      "last_error": f"the install of {version} was interrupted"})
            self.apps.sup.start(self.apps.spec(app, link))
        else:
            app.save({"version": link, "previous_version": None, "state": "failed", "health": "unhealthy",
                      "restarts": 0, "last_error": problem or f"the install of {version} was interrupted"})
            job.data["stopped"] = True

    def _check_restored(self, job: Job, app: Any, back: str) -> str:
        """Watch the version gone back to as an install is watched; record its health (the server shows it).
        → what went wrong, or "" when it is healthy."""
        manifest = json.loads((app.installed(back) or {}).get("manifest") or "{}")

        def relay(state: str, message: str = "", progress: int = 0, result: dict[str, Any] | None = None) -> None:
            job.report(state, f"back on {back}: {message}", progress)

        problem = self.apps.watch(app, back, manifest, relay)
        st = app.state()
        app.save({**st, "health": "unhealthy" if problem else "healthy", "last_error": st["last_error"] + (
            f"; {back} failed its health check too: {problem}" if problem else "")})
        log.info("%s is back on %s, which %s", app.name, back,
                 f"failed its health check too ({problem})" if problem else "passed its health check")
        return problem or ""

    # --- the words ----------------------------------------------------------------------------------
    def outcome(self, job: Job, final: str, message: str) -> tuple[str, str]:
        if final == "succeeded":
            was = job.journal.get("previous_version")
            return final, (f"{job.name} {job.version} is running and passed its health check"
                           + (f" (was {was})" if was and was != job.version else ""))
        problem, data = job.journal.get("problem") or message, job.data
        if "went_back" in data:
            again = data.get("again")
            how = ("" if again is None else f", which failed its health check too ({again})" if again
                   else ", which passed its health check")
            return ("failed" if again else "rolled_back"), f"{problem}; went back to {data['went_back']}{how}"
        if data.get("stopped"):
            return "failed", f"{problem}; stopped it, and there is no previous version to go back to"
        return final, message


__all__ = ["AppModule", "Apps"]
