"""The built-in ``container`` module: a compose spec (a subset, :mod:`.compose`) run through podman's or docker's CLI.

The artifact is the spec alone (images from a registry, pinned by digest) or an archive holding the spec
(``compose.yaml``; also ``compose.yml``, ``docker-compose.y(a)ml``, ``compose.json``) and the images as
``*.tar`` files (``podman save`` / ``docker save`` output), so an offline device needs no registry.

One install is one *release* (the sequence's token). Per component, ``updates/<name>/container/`` holds
``<token>.json`` per release kept (the spec, the image IDs, the container names) and ``current.json`` (the
release running). Containers are named ``fleet-<component>-<service>-<version>-<token>`` and labelled
``fleet.component``/``fleet.release``/``fleet.service``, so old and new never clash.

- Download: the spec is parsed and checked, the images found (in the archive or pinned by digest), the runtime
  detected (``FLEET_AGENT_CONTAINER_RUNTIME``, else podman, else docker) — all before anything changes.
- ArtifactInstall: the archives are loaded (registry images pulled by digest), the running release's containers
  stopped (kept), the new ones created and started in ``depends_on`` order (waiting for ``service_healthy``
  ones), then watched within the health window (metadata ``health_window``, seconds, default 60): every
  container running and every healthcheck passing once, the agent running each check itself with ``exec``.
- ArtifactCommit: ``current.json`` names the new release; the other releases' containers are removed; images
  are pruned, keeping the new release's and the previous one's (its spec too).
- ArtifactRollback: the new containers are removed; the previous release's are started (created again from its
  spec when gone). Cleanup drops an uncommitted release's record and images.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from ..durable import read_json, write_json
from . import CONTAINER_RUNTIME_ENV, Job, ModuleError, ModuleName, UpdateModule, container_runtime, crashpoint
from .compose import SpecError, parse

log = logging.getLogger(__name__)

SPEC_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml", "compose.json")
DEFAULT_HEALTH_WINDOW = 60.0
SETTLE = 1.0  # a service without a healthcheck must have kept running this long
STOP_GRACE = 10


class Runtime:
    """podman or docker, called through its CLI (the subcommands used are the same in both)."""

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.name = Path(exe).name

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ModuleError(f"{self.name} {args[0]} did not finish within {timeout:.0f} s") from None
        except OSError as e:
            raise ModuleError(f"cannot run {self.exe}: {e.strerror}") from None
        if check and r.returncode != 0:
            err = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise ModuleError(f"{self.name} {' '.join(args[:2])} failed: {err}")
        return r

    def inspect(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """name → inspect output, for the containers that exist."""
        if not names:
            return {}
        r = self.run("container", "inspect", *names, check=False, timeout=60)
        try:
            found = json.loads(r.stdout or "[]")
        except ValueError:
            found = []
        return {str(c.get("Name", "")).lstrip("/"): c for c in found if isinstance(c, dict)}


def detect() -> Runtime:
    found = container_runtime()
    if found:
        return Runtime(found)
    wanted = os.environ.get(CONTAINER_RUNTIME_ENV, "")
    if wanted:
        raise ModuleError(f"{CONTAINER_RUNTIME_ENV}={wanted} is not an executable on this device")
    raise ModuleError("this device has no container runtime: install podman (apt install podman) or docker")


def _canon(ref: str) -> str:
    ref = ref.removeprefix("docker.io/library/").removeprefix("docker.io/").removeprefix("localhost/")
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else ref + ":latest"


def archive_names(path: Path) -> list[str]:
    """The image names a docker-archive (manifest.json RepoTags) or an OCI archive (index.json) holds."""
    try:
        with tarfile.open(path) as t:
            names = t.getnames()
            if "manifest.json" in names:
                f = t.extractfile("manifest.json")
                doc = json.load(f) if f else []
                return [str(tag) for m in doc if isinstance(m, dict) for tag in m.get("RepoTags") or []]
            if "index.json" in names:
                f = t.extractfile("index.json")
                doc = json.load(f) if f else {}
                return [str(a[k]) for m in doc.get("manifests", []) if isinstance(a := m.get("annotations"), dict)
                        for k in ("io.containerd.image.name", "org.opencontainers.image.ref.name") if k in a]
    except (OSError, tarfile.TarError, ValueError, AttributeError) as e:
        raise ModuleError(f"the image archive {path.name} cannot be read: {e}") from None
    raise ModuleError(f"{path.name} is neither a docker archive (manifest.json) nor an OCI archive (index.json): "
                      "make it with podman save or docker save")


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", text)


class ContainerModule(UpdateModule):
    name = ModuleName.CONTAINER.value

    def __init__(self, runtime: Runtime | None = None) -> None:
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = detect()
        return self._runtime

    def supports_rollback(self, job: Job) -> bool:
        return True

    # --- the records ---------------------------------------------------------------------------
    @staticmethod
    def records(component_folder: Path) -> Path:
        return component_folder / "container"

    def _folder(self, job: Job) -> Path:
        return self.records(job.tree.parent)

    @staticmethod
    def current(folder: Path) -> str | None:
        cur = read_json(folder / "current.json")
        return str(cur["release"]) if isinstance(cur, dict) and cur.get("release") else None

    @staticmethod
    def release(folder: Path, token: str | None) -> dict[str, Any] | None:
        rel = read_json(folder / f"{token}.json") if token else None
        return rel if isinstance(rel, dict) else None

    # --- Download ----------------------------------------------------------------------------
    def state_Download(self, job: Job) -> None:
        top = sorted(p for p in job.files.iterdir())
        specs = [p for p in top if p.name in SPEC_NAMES]
        if not specs and len(top) == 1 and top[0].suffix in (".yaml", ".yml", ".json"):
            specs = top
        if len(specs) != 1:
            raise ModuleError(f"the container module needs one compose file in the artifact ({', '.join(SPEC_NAMES)}"
                              f"); this one has {len(specs)}: {', '.join(p.name for p in specs) or 'none'}")
        try:
            spec = parse(specs[0].read_text(encoding="utf-8"))
        except SpecError as e:
            raise ModuleError(f"{specs[0].name}: {e}") from None
        except UnicodeDecodeError:
            raise ModuleError(f"{specs[0].name} is not UTF-8 text") from None
        archives = [p.name for p in top if p.suffix == ".tar" and p.is_file()]
        shipped = {_canon(n) for a in archives for n in archive_names(job.files / a)}
        for svc, s in spec["services"].items():
            if _canon(s["image"]) not in shipped and not s["digest"]:
                raise ModuleError(f"{specs[0].name}: services.{svc}.image: {s['image']!r} is neither in the "
                                  "artifact's image archives nor pinned by digest (name@sha256:…)")
        self._window(job)  # refused here, before anything changes
        self.runtime  # noqa: B018  (likewise when the device has no runtime)
        prefix = f"fleet-{_safe(job.name)}"
        job.data.update(release=job.journal["token"], previous=self.current(self._folder(job)))
        rel = {"token": job.journal["token"], "version": job.version, "spec": spec, "archives": archives,
               "images": {}, "component": job.name, "volume_prefix": prefix,
               "containers": {svc: f"{prefix}-{svc}-{_safe(job.version)}-{job.journal['token']}"
                              for svc in spec["order"]}}
        self._folder(job).mkdir(exist_ok=True)
        write_json(self._folder(job) / f"{job.journal['token']}.json", rel)

    # --- ArtifactInstall ----------------------------------------------------------------------
    def state_ArtifactInstall(self, job: Job) -> None:
        folder = self._folder(job)
        rel = self.release(folder, job.data["release"])
        if rel is None:
            raise ModuleError("the release record written in Download is gone")
        rt = self.runtime
        for a in rel["archives"]:
            rt.run("load", "-i", str(job.files / a), timeout=1800)
        images: dict[str, str] = {}
        for svc in rel["spec"]["order"]:
            ref = rel["spec"]["services"][svc]["image"]
            if ref not in images:
                got = rt.run("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=60)
                if got.returncode != 0:
                    rt.run("pull", ref, timeout=1800)
                    got = rt.run("image", "inspect", "--format", "{{.Id}}", ref, timeout=60)
                images[ref] = got.stdout.strip()
        rel["images"] = images
        write_json(folder / f"{rel['token']}.json", rel)
        previous = self.release(folder, job.data.get("previous"))
        if previous is not None:
            self._stop(previous)
        deadline = time.monotonic() + self._window(job)
        watch = Watch(rt, rel)
        for svc in rel["spec"]["order"]:
            for dep, cond in rel["spec"]["services"][svc]["depends_on"].items():
                if cond == "service_healthy":
                    watch.until_green([dep], deadline)
            self._create(rel, svc)
            rt.run("start", rel["containers"][svc], timeout=120)
            watch.started(svc)
        crashpoint("mod-container-switching")
        watch.until_green(rel["spec"]["order"], deadline)

    @staticmethod
    def _window(job: Job) -> float:
        raw = job.meta.get("health_window", "")
        try:
            window = float(raw) if raw else DEFAULT_HEALTH_WINDOW
        except ValueError:
            raise ModuleError(f"the metadata health_window {raw!r} must be a number of seconds") from None
        if not 0 < window <= 3600:
            raise ModuleError(f"the metadata health_window {raw!r} must be more than 0 and at most 3600 seconds")
        return window

    def _create(self, rel: dict[str, Any], svc: str) -> None:
        s = rel["spec"]["services"][svc]
        name = rel["containers"][svc]
        args = ["create", "--name", name, "--label", f"fleet.component={rel['component']}",
                "--label", f"fleet.release={rel['token']}", "--label", f"fleet.service={svc}"]
        if s["restart"] != "no":
            args += ["--restart", s["restart"]]
        for k, v in s["environment"].items():
            args += ["-e", f"{k}={v}"]
        for p in s["ports"]:
            args += ["-p", p]
        for source, target, mode in s["volumes"]:
            host = source if source.startswith("/") else f"{rel['volume_prefix']}-{source}"
            args += ["-v", f"{host}:{target}:{mode}"]
        args.append(rel["images"][s["image"]])
        args += s["command"] or []
        self.runtime.run(*args, timeout=120)

    def _stop(self, rel: dict[str, Any]) -> None:
        live = self.runtime.inspect(list(rel["containers"].values()))
        running = [n for n in reversed(list(rel["containers"].values())) if n in live]
        if running:
            self.runtime.run("stop", "-t", str(STOP_GRACE), *running, timeout=STOP_GRACE * len(running) + 60)

    def _remove(self, rel: dict[str, Any]) -> None:
        live = self.runtime.inspect(list(rel["containers"].values()))
        gone = [n for n in reversed(list(rel["containers"].values())) if n in live]
        if gone:  # stopped first: rm -f would not give them the grace a stop does
            self.runtime.run("stop", "-t", str(STOP_GRACE), *gone, timeout=STOP_GRACE * len(gone) + 60)
            self.runtime.run("rm", "-f", *gone, timeout=120)

    def bring_up(self, rel: dict[str, Any]) -> None:
        """The release's containers running: created again from its spec where gone, started in order."""
        live = self.runtime.inspect(list(rel["containers"].values()))
        for svc in rel["spec"]["order"]:
            name = rel["containers"][svc]
            if name not in live:
                self._create(rel, svc)
            self.runtime.run("start", name, timeout=120)

    # --- commit, rollback, cleanup --------------------------------------------------------------
    def state_ArtifactCommit(self, job: Job) -> None:
        folder = self._folder(job)
        token = job.data["release"]
        write_json(folder / "current.json", {"release": token})
        for p in sorted(folder.glob("*.json")):
            rel = self.release(folder, p.stem) if p.name != "current.json" else None
            if rel is not None and rel["token"] != token:
                self._remove(rel)
        self._prune(folder, keep={token, job.data.get("previous")})

    def state_ArtifactRollback(self, job: Job) -> None:
        folder = self._folder(job)
        new = self.release(folder, job.data.get("release"))
        if new is not None:
            self._remove(new)
        previous = self.release(folder, job.data.get("previous"))
        if previous is None:
            (folder / "current.json").unlink(missing_ok=True)
            return
        write_json(folder / "current.json", {"release": previous["token"]})
        self.bring_up(previous)

    def state_Cleanup(self, job: Job) -> None:
        folder = self._folder(job)
        if "release" in job.data and self.current(folder) != job.data["release"]:
            self._prune(folder, keep={self.current(folder), job.data.get("previous")})
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def _prune(self, folder: Path, keep: set[str | None]) -> None:
        """Drop the records and images of every release not in ``keep`` (images a kept one uses stay)."""
        kept = [r for t in keep if (r := self.release(folder, t)) is not None]
        used = {i for r in kept for i in r.get("images", {}).values()}
        for p in sorted(folder.glob("*.json")):
            if p.name == "current.json" or p.stem in keep:
                continue
            rel = self.release(folder, p.stem)
            if rel is not None:
                self._remove(rel)
                for image in set(rel.get("images", {}).values()) - used:
                    done = self.runtime.run("image", "rm", image, check=False, timeout=120)
                    if done.returncode != 0 and not any(m in done.stderr for m in ("image not known", "No such image")):
                        log.warning("could not remove image %s: %s", image, done.stderr.strip()[-300:])
            p.unlink(missing_ok=True)

    # --- inventory ------------------------------------------------------------------------------
    def status(self, component_folder: Path) -> dict[str, Any] | None:
        """state/health/restarts of the running release, as the inventory shows an app's; None without one."""
        folder = self.records(component_folder)
        rel = self.release(folder, self.current(folder))
        if rel is None:
            return None
        live = self.runtime.inspect(list(rel["containers"].values()))
        states: list[tuple[str, str]] = []
        restarts = 0
        for svc, name in rel["containers"].items():
            c = live.get(name, {})
            st = c.get("State") or {}
            states.append((svc, str(st.get("Status") or "missing")))
            restarts += int(c.get("RestartCount") or 0)
        down = [svc for svc, st in states if st != "running"]
        return {"state": "running" if not down else "failed", "health": "unhealthy" if down else "healthy",
                "restarts": restarts}


def start_installed(component_folder: Path) -> None:
    """At the agent's start: the installed release's containers running (nothing starts them after a reboot
    without systemd)."""
    mod = ContainerModule()
    folder = mod.records(component_folder)
    rel = mod.release(folder, mod.current(folder))
    if rel is not None:
        mod.bring_up(rel)


class Watch:
    """A release's containers watched as the health window runs: running, and each healthcheck passed once."""

    def __init__(self, rt: Runtime, rel: dict[str, Any]) -> None:
        self.rt, self.rel = rt, rel
        self.since: dict[str, float] = {}
        self.healthy: set[str] = set()
        self.failing: dict[str, int] = {}
        self.last: dict[str, str] = {}
        self.next_check: dict[str, float] = {}

    def started(self, svc: str) -> None:
        self.since[svc] = self.next_check[svc] = time.monotonic()

    def until_green(self, services: list[str], deadline: float) -> None:
        spec = self.rel["spec"]["services"]
        while True:
            live = self.rt.inspect([self.rel["containers"][s] for s in services])
            now = time.monotonic()
            pending = []
            for svc in services:
                state = (live.get(self.rel["containers"][svc]) or {}).get("State") or {}
                status = str(state.get("Status") or "missing")
                if status in ("exited", "stopped", "dead", "missing") and spec[svc]["restart"] in ("no", "on-failure"):
                    code = state.get("ExitCode")
                    raise ModuleError(f"service {svc} {status}" + (f" with code {code}" if code is not None else "")
                                      + " instead of running")
                health = spec[svc]["healthcheck"]
                if svc in self.healthy:
                    continue
                if health is None:
                    if status == "running" and now - self.since[svc] >= SETTLE:
                        self.healthy.add(svc)
                    else:
                        pending.append(svc)
                    continue
                if status == "running" and now >= self.next_check[svc]:
                    self._check(svc, health)
                if svc not in self.healthy:
                    pending.append(svc)
            if not pending:
                return
            if time.monotonic() >= deadline:
                why = "; ".join(f"{s}: {self.last[s]}" if s in self.last else f"{s}: not running and healthy yet"
                                for s in pending)
                raise ModuleError(f"not healthy within the health window ({why})")
            wake = min([self.next_check.get(s, now) for s in pending] + [now + 0.5, deadline])
            time.sleep(max(0.05, min(wake - time.monotonic(), 0.5)))

    def _check(self, svc: str, health: dict[str, Any]) -> None:
        name = self.rel["containers"][svc]
        try:
            r = subprocess.run([self.rt.exe, "exec", name, *health["test"]], capture_output=True, text=True,
                               timeout=health["timeout"], stdin=subprocess.DEVNULL)
            ok, out = r.returncode == 0, (r.stdout + r.stderr).strip()[-200:] or f"exit status {r.returncode}"
        except subprocess.TimeoutExpired:
            ok, out = False, f"timed out after {health['timeout']:g} s"
        now = time.monotonic()
        self.next_check[svc] = now + max(health["interval"], 0.1)
        if ok:
            self.healthy.add(svc)
            return
        self.last[svc] = f"healthcheck failed: {out}"
        if now - self.since[svc] < health["start_period"]:
            return  # failures in the start period do not count
        self.failing[svc] = self.failing.get(svc, 0) + 1
        if self.failing[svc] >= health["retries"]:
            raise ModuleError(f"service {svc}'s healthcheck failed {self.failing[svc]} times in a row: {out}")


__all__ = ["ContainerModule", "Runtime", "archive_names", "detect", "start_installed"]
