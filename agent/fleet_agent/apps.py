"""The Executor: carries out the server's actions (install, rollback, restart, reboot, config, logs) on this device.

Apps live in ``apps/<name>/``: one folder per installed ``<version>`` (the
app's files plus ``.fleet-manifest.json``, the signed manifest it was installed
from), a ``current`` symlink naming the version that runs, ``state.json``,
``log`` and ``config.json``. Every install, an app's too, goes through the
update-module sequence (:mod:`.modules.sequence`; the ``app`` module is
:mod:`.modules.app`): verify the manifest here, then download → verify the
bytes → put the version in place → switch ``current``, start, watch the health
window → commit, or switch back. The sequence's journal and the renames leave
``current`` on a complete version after a power cut, and :meth:`Executor.start`
finishes the job: an install that was not committed is undone, and the action,
still open on the server, runs again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import selfupdate
from .download import DownloadError, download
from .durable import read_json, read_link, remove_tree, sweep, switch_link, write_json
from .modules import ModuleError, ModuleName, crashpoint
from .modules.app import AppModule
from .modules.sequence import Driver
from .names import APP_NAME, ENV_NAME, MANIFEST_FILE, SHA256, VERSION, BadName, check_file_name
from .supervisor import POLICIES, ProcessManager, ProcessSpec
from .systemd import make_supervisor
from .unpack import is_archive
from .verify import VerificationError, b64decode, verify_file, verify_manifest
from .worker import Report

log = logging.getLogger(__name__)

REBOOT_ENV = "FLEET_AGENT_REBOOT_CMD"
# Trusted offline signing keys (base64, comma-separated): with any, every artifact must carry a signature by one.
# Local configuration on purpose: a server-pushed config action must not be able to lift the requirement.
OFFLINE_KEYS_ENV = "FLEET_AGENT_OFFLINE_KEYS"
DEFAULT_REBOOT = "systemctl reboot"
# An app install's crash points: here (downloaded, verified, watching) and in the app module (modules/app.py).
CRASH_STEPS = ("downloaded", "verified", "unpacked", "placed", "intent", "switched", "started", "watching",
               "committed", "reverting", "reverted")


class ActionFailed(ModuleError):
    """The action cannot be carried out; the message says why (a ModuleError, so that the app module's states
    fail with it too)."""


def offline_keys_from_env() -> list[bytes]:
    keys = []
    for item in os.environ.get(OFFLINE_KEYS_ENV, "").split(","):
        if not item.strip():
            continue
        try:
            key = b64decode(item)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"{OFFLINE_KEYS_ENV}: {item.strip()!r} is not a base64 Ed25519 public key (32 bytes)")
        keys.append(key)
    return keys


def _semver_key(v: str) -> tuple[Any, ...] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?", v)
    if not m:
        return None
    pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in m[4].split(".")) if m[4] else ()
    return int(m[1]), int(m[2]), int(m[3]), 0 if pre else 1, pre


def older(a: str, b: str) -> bool:
    """Is version ``a`` lower than ``b``? (False when either is not a semantic version.)"""
    ka, kb = _semver_key(a), _semver_key(b)
    return ka is not None and kb is not None and ka < kb


class App:
    """The files of one app under ``apps/<name>/``."""

    def __init__(self, apps_dir: Path, name: str) -> None:
        self.name = name
        self.root = apps_dir / name
        self.current = self.root / "current"
        self.state_file = self.root / "state.json"
        self.config = self.root / "config.json"

    def dir(self, version: str) -> Path:
        return self.root / version

    def current_version(self) -> str | None:
        return read_link(self.current)

    def state(self) -> dict[str, Any]:
        st = read_json(self.state_file)
        return st if isinstance(st, dict) else {}

    def save(self, st: dict[str, Any]) -> None:
        write_json(self.state_file, st)

    def installed(self, version: str) -> dict[str, Any] | None:
        """The record a complete install of ``version`` left (renamed into place, so all or nothing)."""
        meta = read_json(self.dir(version) / MANIFEST_FILE)
        return meta if isinstance(meta, dict) else None


class Executor:
    # Seconds a new version must stay up when its manifest gives no grace_seconds.
    default_grace = 30.0
    # Seconds a restarted app must stay up for the restart to count as done.
    restart_check = 1.0
    # Seconds between reporting a reboot and rebooting, for the report to go out.
    reboot_delay = 2.0
    download_deadline = 900.0
    probe_attempts = 3

    def __init__(self, state_dir: Path, client: Any, signing_public_key: bytes, device_type: str, *,
                 offline_keys: Sequence[bytes] | None = None, supervisor: ProcessManager | None = None,
                 agent_config: Callable[[dict[str, Any]], str] | None = None, modules: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.apps_dir = self.state_dir / "apps"
        self.staging = self.state_dir / "staging"
        self.client = client
        self.signing_public_key = signing_public_key
        self.device_type = device_type
        self.offline_keys = list(offline_keys) if offline_keys is not None else offline_keys_from_env()
        self.sup: ProcessManager = supervisor or make_supervisor()
        self.agent_config = agent_config or self._write_agent_config
        # The agent exits through this to let the launcher start the new agent (tests replace it).
        self.exit_for_update: Callable[[], None] = self._exit_for_update
        self._busy = threading.Event()
        # Every artifact goes through the update-module sequence (modules/), apps through the app module.
        self.updates = Driver(self.state_dir, device_type, modules=modules, reboot=self._reboot_now,
                              app=AppModule(self))

    # --- the run loop's interface ------------------------------------------------
    def start(self) -> None:
        """Bring every installed app's ``current`` version up, finishing or undoing interrupted installs."""
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        sweep(self.apps_dir)
        for app in self._apps():
            sweep(app.root)
        self.updates.recover()  # an install that did not finish is finished or undone (apps started as it goes)
        for app in self._apps():
            try:
                self._settle(app)
                st = app.state()
                version = app.current_version()
                if version and st.get("state") == "running":
                    self.sup.resume(self.spec(app, version))
            except Exception as e:  # one broken app must not keep the others down
                log.exception("cannot start app %s", app.name)
                st = app.state()
                st.update(state="failed", last_error=f"cannot start: {e}")
                app.save(st)

    def stop(self) -> None:
        for app in self._apps():
            st = app.state()
            live = self.sup.status(app.name).restarts
            if live:
                st["restarts"] = int(st.get("restarts") or 0) + live
                app.save(st)
        self.sup.close()
        self.updates.close()

    def busy(self) -> bool:
        return self._busy.is_set()

    def components(self) -> list[dict[str, Any]]:
        out = []
        for app in self._apps():
            version = app.current_version()
            if not version:
                continue
            st = app.state()
            live = self.sup.status(app.name)
            j = self.updates.journal(app.name)
            if j is not None and not j.get("outcome"):
                state, health = "installing", ""
            elif st.get("state") in ("failed", "stopped"):
                state = st["state"]
                health = "unhealthy" if state == "failed" else ""
            else:
                state = live.state
                health = {"running": str(st.get("health") or ""), "failed": "unhealthy"}.get(state, "")
            out.append({"name": app.name, "version": version, "state": state, "health": health,
                        "restarts": int(st.get("restarts") or 0) + live.restarts})
        out += [c for c in self.updates.components() if all(c["name"] != o["name"] for o in out)]
        agent = selfupdate.agent_component(self.state_dir)
        if agent is not None and all(c["name"] != agent["name"] for c in out):
            out.append(agent)
        return out

    def execute(self, action: dict[str, Any], report: Report) -> None:
        """Carry out ``action``, reporting its progress and always a final state."""
        self._busy.set()
        try:
            if action.get("state") == "offered":
                # No one to ask on a headless device: consent is this agent's policy.
                report("accepted", "accepted by the device (it consents to every offered action)", 0)
            self._dispatch(action, report)
        except ActionFailed as e:
            report("failed", str(e), 0)
        except Exception as e:
            log.exception("action %s failed", action.get("id"))
            report("failed", f"the agent hit an error: {type(e).__name__}: {e}", 0)
        finally:
            self._busy.clear()

    # --- dispatch ----------------------------------------------------------------------
    def _dispatch(self, action: dict[str, Any], report: Report) -> None:
        kind = action.get("kind")
        artifact = action.get("artifact")
        if kind in ("install", "rollback"):
            if artifact:
                self._install(action, artifact, report)
            elif kind == "rollback" and (self.updates.installed(str(action.get("component") or "")) or {}).get(
                    "module", ModuleName.APP.value) != ModuleName.APP.value:
                raise ActionFailed(f"no previous version of {action.get('component')} is known to the server; "
                                   "deploy the version you want instead")
            elif kind == "rollback":
                self._remove(str(action.get("component") or ""), report)
            else:
                raise ActionFailed("the install action carries no artifact")
        elif kind == "restart":
            self._restart(self._app(str(action.get("component") or "")), report)
        elif kind == "config":
            self._config(str(action.get("component") or ""), action.get("params") or {}, report)
        elif kind == "reboot":
            self._reboot(report)
        elif kind == "logs":
            self._logs(str(action.get("component") or ""), action.get("params"), report)
        else:
            raise ActionFailed(f"this agent does not know action kind {kind!r}; update the agent")

    # --- what the app module (modules/app.py) uses ---------------------------------------
    def app(self, name: str) -> App:
        return App(self.apps_dir, name)

    def _app(self, name: str, must_exist: bool = True) -> App:
        try:
            APP_NAME.check(name)
        except BadName as e:
            raise ActionFailed(f"refused: {e}") from None
        app = App(self.apps_dir, name)
        if must_exist and not app.current_version():
            raise ActionFailed(f"no app {name!r} is installed on this device")
        return app

    def _apps(self) -> list[App]:
        if not self.apps_dir.is_dir():
            return []
        return [App(self.apps_dir, p.name) for p in sorted(self.apps_dir.iterdir())
                if p.is_dir() and APP_NAME.ok(p.name)]

    # --- install ----------------------------------------------------------------------
    def _install(self, action: dict[str, Any], art: dict[str, Any], report: Report) -> None:
        try:
            manifest = verify_manifest(art, self.signing_public_key, self.device_type, self.offline_keys)
        except VerificationError as e:
            raise ActionFailed(f"refused: {e.message}") from None
        component = action.get("component") or art["name"]
        if component != art["name"]:
            raise ActionFailed(f"the action is for {component!r} but its artifact is {art['name']!r}")
        try:
            # The agent makes paths of these; the signature says who sent them, not that they are safe.
            VERSION.check(art["version"])
            SHA256.check(art["sha256"])
            check_file_name(art["file_name"])
        except BadName as e:
            raise ActionFailed(f"refused: {e}") from None
        module = str(manifest.get("module") or ModuleName.APP.value)
        if art["kind"] == "agent":
            self._update_agent(action, art, manifest, report)
        elif art["kind"] == "app":
            if module == ModuleName.APP.value:
                self._app(str(art["name"]), must_exist=False)  # refused unless it is a name for a folder
            elif App(self.apps_dir, art["name"]).current_version():
                raise ActionFailed(f"{art['name']} is installed as an app on this device; an artifact for the "
                                   f"{module} module needs another name")
            try:
                self.updates.install(action, art, manifest, module, lambda: self._fetch(art, manifest, report),
                                     report, older)
            except ModuleError as e:
                raise ActionFailed(str(e)) from None
        else:
            raise ActionFailed(f"this agent installs app and agent artifacts; a {art['kind']} is for another "
                               "kind of device (microcontroller firmware goes through the RTOS shim)")

    def _fetch(self, art: dict[str, Any], manifest: dict[str, Any], report: Report) -> Path:
        last = [-1]

        def progress(done: int, total: int) -> None:
            pct = done * 100 // total if total else 100
            if pct // 10 != last[0] // 10:
                last[0] = pct
                report("downloading", f"{done} of {total} bytes", pct)

        report("downloading", f"{art['file_name']}: {art['size']} bytes", 0)
        try:
            path = download(self.client, art, self.staging, progress, self.download_deadline)
        except DownloadError as e:
            raise ActionFailed(e.message) from None
        crashpoint("downloaded")
        report("verifying", "checking the file's size and SHA-256 against the signed manifest", 0)
        try:
            verify_file(path, manifest)
        except VerificationError as e:
            path.unlink(missing_ok=True)
            raise ActionFailed(f"refused: {e.message}") from None
        crashpoint("verified")
        return path

    def _settle(self, app: App) -> None:
        """Make ``current`` and state.json agree at start (the sequence has finished or undone any install)."""
        st = app.state()
        link = app.current_version()
        if link is None:
            remove_tree(app.root)  # versions placed by a first install that never switched
        elif app.installed(link) is None:
            previous = st.get("previous_version")
            if previous and app.installed(str(previous)):
                switch_link(app.current, str(previous))
                app.save({"version": previous, "previous_version": None, "state": "running", "health": "",
                          "restarts": 0, "last_error": f"{link} is incomplete on disk"})
            else:
                st.update(version=link, state="failed", health="unhealthy",
                          last_error=f"{link} is incomplete on disk; deploy it again")
                app.save(st)
        elif st.get("version") != link or "pending" in st:  # "pending": an install cut under an older agent
            st.pop("pending", None)
            st.update(version=link, state=st.get("state") or "running")
            app.save(st)

    def spec(self, app: App, version: str) -> ProcessSpec:
        meta = app.installed(version)
        if meta is None:
            raise ActionFailed(f"{app.name} {version} is not completely installed")
        manifest = json.loads(meta["manifest"])
        install = manifest.get("install") or {}
        vdir = app.dir(version)
        command = install.get("command") or []
        if not isinstance(command, list) or not all(isinstance(c, str) and c for c in command):
            raise ActionFailed("the install spec's command must be a list of non-empty strings")
        if not command:
            if is_archive(manifest["file_name"]):
                raise ActionFailed(f"{manifest['file_name']} is an archive: its install spec must give the "
                                   "command to run")
            command = [str(vdir / manifest["file_name"])]
        wd = install.get("working_dir") or ""
        cwd = vdir / wd if wd else vdir
        if not cwd.is_dir():
            raise ActionFailed(f"the install spec's working_dir {wd!r} is not a folder on this device")
        restart = install.get("restart") or "on-failure"
        if restart not in POLICIES:
            raise ActionFailed(f"unknown restart policy {restart!r}")
        env = {str(k): str(v) for k, v in (install.get("env") or {}).items()}
        for k, v in env.items():
            try:
                ENV_NAME.check(k)
            except BadName as e:
                raise ActionFailed(f"refused: the install spec's {e}") from None
            if "\0" in v:
                raise ActionFailed(f"refused: the install spec's env {k} must not contain NUL characters")
        env.update(FLEET_APP_NAME=app.name, FLEET_APP_VERSION=version, FLEET_APP_DIR=str(vdir),
                   FLEET_APP_CONFIG=str(app.config))
        return ProcessSpec(name=app.name, argv=command, cwd=str(cwd), env=env, log=app.root / "log",
                           pidfile=app.root / "pid", restart=restart, description=f"{app.name} {version}")

    def watch(self, app: App, version: str, manifest: dict[str, Any], report: Report) -> str | None:
        """Watch the health window; None when healthy, else what went wrong."""
        from .health import probe

        health = (manifest.get("install") or {}).get("health") or {}
        grace = float(health.get("grace_seconds", 30)) if health else self.default_grace
        started = time.monotonic()
        next_note = started + 5
        while True:
            s = self.sup.status(app.name)
            elapsed = time.monotonic() - started
            if s.exits or s.state != "running":
                code = f"code {s.last_exit}" if s.last_exit is not None else s.state
                return f"it exited ({code}) {elapsed:.1f} s after it started" + (f": {s.error}" if s.error else "")
            if elapsed >= grace:
                break
            if time.monotonic() >= next_note:
                report("installing", f"health check: {int(elapsed)} of {grace:g} s",
                       min(99, int(elapsed * 100 / grace)))
                next_note += 5
            crashpoint("watching")
            time.sleep(0.1)
        if health.get("http_url") or health.get("command"):
            problem = None
            for attempt in range(self.probe_attempts):
                problem = probe(health, str(app.dir(version)), self.spec(app, version).env)
                if problem is None:
                    break
                if attempt + 1 < self.probe_attempts:
                    time.sleep(1)
            if problem is not None:
                return problem
            s = self.sup.status(app.name)
            if s.exits or s.state != "running":
                return f"it exited (code {s.last_exit}) during the health probe"
        return None

    # --- the other kinds ---------------------------------------------------------------
    def _remove(self, name: str, report: Report) -> None:
        agent = selfupdate.agent_component(self.state_dir)
        if agent is not None and agent["name"] == name:
            report("succeeded", f"no previous agent version to go back to; keeping {agent['version']}", 100)
            return
        app = self._app(name, must_exist=False)
        version = app.current_version()
        if not app.root.exists():
            report("succeeded", f"{name} is not installed; nothing to remove", 100)
            return
        self.sup.forget(name)
        remove_tree(app.root)
        remove_tree(self.updates.folder(name))  # what its last install through the sequence left
        report("succeeded", f"removed {name}{' ' + version if version else ''}: there is no previous version "
                            "to go back to", 100)

    def _restart(self, app: App, report: Report) -> None:
        version = str(app.current_version())
        spec = self.spec(app, version)
        report("installing", f"restarting {app.name} {version}", 0)
        self.sup.start(spec)
        st = app.state()
        st.update(state="running", last_error="")
        app.save(st)
        time.sleep(self.restart_check)
        s = self.sup.status(app.name)
        if s.exits or s.state != "running":
            raise ActionFailed(f"{app.name} {version} did not stay up after the restart (exit code {s.last_exit})"
                               + (f": {s.error}" if s.error else ""))
        report("succeeded", f"restarted {app.name} {version}", 100)

    def _config(self, component: str, params: dict[str, Any], report: Report) -> None:
        if not isinstance(params, dict):
            raise ActionFailed("config params must be an object")
        if not component:
            where = self.agent_config(params)
            report("succeeded", f"applied {len(params)} setting(s) to {where}", 100)
            return
        app = self._app(component)
        write_json(app.config, params)
        if self.sup.status(app.name).state == "running":
            self._restart(app, lambda *_: None)
            report("succeeded", f"wrote {len(params)} setting(s) to {app.config} and restarted {app.name}", 100)
        else:
            report("succeeded", f"wrote {len(params)} setting(s) to {app.config}", 100)

    def _logs(self, name: str, params: Any, report: Report) -> None:
        from .applogs import LogsRefused, allowed, last_lines

        try:
            allowed(os.environ)  # first: a device that keeps its logs says nothing about its apps
            message, result = last_lines(self._app(name).root, name, params)
        except LogsRefused as e:
            raise ActionFailed(str(e)) from None
        report("succeeded", message, 100, result)

    def _write_agent_config(self, params: dict[str, Any]) -> str:
        path = self.state_dir / "config.json"
        current = read_json(path)
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update(params)
        write_json(path, merged)
        return str(path)

    def _reboot(self, report: Report) -> None:
        command = shlex.split(os.environ.get(REBOOT_ENV) or DEFAULT_REBOOT)
        report("succeeded", f"rebooting ({' '.join(command)})", 100)
        self._reboot_now()

    def _reboot_now(self) -> None:
        command = shlex.split(os.environ.get(REBOOT_ENV) or DEFAULT_REBOOT)
        time.sleep(self.reboot_delay)
        try:
            r = subprocess.run(command, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("reboot command %s failed: %s", command, e)
            return
        if r.returncode != 0:
            log.error("reboot command %s exited with %s: %s", command, r.returncode, r.stderr[-500:])

    # --- the agent itself -----------------------------------------------------------------
    def _update_agent(self, action: dict[str, Any], art: dict[str, Any], manifest: dict[str, Any],
                      report: Report) -> None:
        version = str(art["version"])
        if selfupdate.trial_version() == version and selfupdate.confirm(self.state_dir):
            report("succeeded", f"the agent {version} runs and has checked in", 100)
            return
        reason = selfupdate.rolled_back(self.state_dir, version)
        if reason is not None:
            running = selfupdate.current_version(self.state_dir)
            report("rolled_back", f"{reason}; the previous agent{' ' + running if running else ''} runs again", 100)
            selfupdate.forget_rollback(self.state_dir, version)
            return
        current = selfupdate.current_version(self.state_dir)
        if current == version:
            report("succeeded", f"the agent {version} is already running", 100)
            return
        if current and older(version, current) and not action.get("rollback"):
            raise ActionFailed(f"agent {version} is older than the running {current}; use a rollback to go back")
        if not selfupdate.launched():
            raise ActionFailed("this agent was not started by the fleet-agent launcher, so it cannot restart "
                               "into a new version; run it through the launcher (the systemd unit does)")
        path = self._fetch(art, manifest, report)
        report("installing", f"restarting into agent {version} for a trial run", 50)
        try:
            selfupdate.stage(self.state_dir, version, path, str(art["name"]))
        except ValueError as e:
            raise ActionFailed(f"refused: {e}") from None
        path.unlink(missing_ok=True)
        self.exit_for_update()

    def _exit_for_update(self) -> None:
        self.stop()
        logging.shutdown()
        os._exit(selfupdate.SELF_UPDATE_EXIT)
