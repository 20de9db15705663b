"""The container module with Debian's podman on this machine (root, runc): a real Executor installs compose specs
shipped with their images as a `podman save` archive (no registry). Images are built once for the module from
busybox-static with `podman import`; podman's storage (graphroot/runroot) and containers.conf are in a temp dir
(CONTAINERS_STORAGE_CONF, CONTAINERS_CONF), so nothing is left behind."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_agent.modules import CRASH_ENV, CRASH_EXIT
from tests.agent.apps_support import REPO, Device, make_action

MISSING = "" if (shutil.which("podman") and shutil.which("runc") and Path("/bin/busybox").is_file()
                 and os.geteuid() == 0) else "the container tests need root, podman, runc and /bin/busybox " \
                                             "(apt-get install podman runc busybox-static)"

LOOP = "trap 'exit 0' TERM; while :; do /bin/busybox sleep 0.2; done"


def podman(*args: str, check: bool = True) -> str:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    assert not check or r.returncode == 0, f"podman {' '.join(args)}: {r.stderr}"
    return r.stdout


class Images:
    """Image archives of three versions of localhost/fleet-test/app (a busybox root file system with /version)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archives: dict[str, bytes] = {}
        self.ids: dict[str, str] = {}
        fs = root / "fs"
        (fs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", fs / "bin" / "busybox")
        (fs / "bin" / "sh").symlink_to("busybox")
        for v in ("1", "2", "3"):
            (fs / "version").write_text(v + "\n")
            rootfs = root / f"rootfs-{v}.tar"
            with tarfile.open(rootfs, "w") as t:
                t.add(fs, arcname=".")
            ref = f"localhost/fleet-test/app:{v}"
            self.ids[v] = podman("import", "-q", str(rootfs), ref).strip().removeprefix("sha256:")
            out = root / f"images-{v}.tar"
            podman("save", "-q", "-o", str(out), ref)
            self.archives[v] = out.read_bytes()
            podman("rmi", ref)  # the device gets it from the artifact


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    if MISSING:  # CI sets FLEETD_REQUIRE_PODMAN: there, a skip would hide a broken setup
        (pytest.fail if os.environ.get("FLEETD_REQUIRE_PODMAN") else pytest.skip)(MISSING)
    root = tmp_path_factory.mktemp("podman")
    (root / "containers.conf").write_text('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
    (root / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\n'
                                       f'runroot = "{root}/run"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_CONF", str(root / "containers.conf"))
        mp.setenv("CONTAINERS_STORAGE_CONF", str(root / "storage.conf"))
        mp.delenv("FLEET_AGENT_CONTAINER_RUNTIME", raising=False)
        yield Images(root)
        podman("rm", "-af", "-t", "0", check=False)
        podman("volume", "prune", "-f", check=False)
        podman("rmi", "-af", check=False)
        subprocess.run(["umount", "-R", str(root / "graph")], capture_output=True)
        shutil.rmtree(root / "graph", ignore_errors=True)


def reset() -> None:
    """No container and no image left for the next test (the module's images are in archives)."""
    podman("rm", "-af", "-t", "0", check=False)
    podman("rmi", "-af", check=False)


@pytest.fixture
def dev(images: Images, tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path / "state")
    d.ex.start()
    yield d
    d.ex.stop()
    reset()


def spec(v: str, *, web_check: str = "true") -> str:
    image = f"localhost/fleet-test/app:{v}"
    return json.dumps({"services": {
        "web": {"image": image, "command": ["/bin/sh", "-c", LOOP], "environment": {"RELEASE": v},
                "depends_on": {"db": {"condition": "service_healthy"}},
                "healthcheck": {"test": ["CMD", "/bin/busybox", web_check], "interval": "200ms", "retries": 2}},
        "db": {"image": image, "command": ["/bin/sh", "-c", LOOP], "volumes": ["data:/data"], "restart": "always",
               "healthcheck": {"test": "/bin/busybox test -f /version", "interval": "200ms"}},
    }, "volumes": {"data": None}}, indent=1)


def artifact(images: Images, v: str, *, compose: str | None = None, shipped: str | None = None, **kw: str) -> bytes:
    """compose.yaml (spec(v) unless given) and images.tar (version ``shipped``, default v) in a tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in (("compose.yaml", (compose or spec(v, **kw)).encode()),
                           ("images.tar", images.archives[shipped or v])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def action(dev: Device, images: Images, v: str, **kw: str) -> dict[str, Any]:
    art = dev.artifact(artifact(images, v, **kw), f"{v}.0.0", name="stack", module="container",
                       meta={"health_window": "20"}, file_name=f"stack-{v}.tar")
    return make_action(art)


def containers() -> dict[str, dict[str, Any]]:
    """name → (image, status, started) of every container podman has."""
    names = podman("ps", "-a", "--format", "{{.Names}}").split()
    if not names:
        return {}
    return {c["Name"]: {"image": c["Image"], "status": c["State"]["Status"], "started": c["State"]["StartedAt"],
                        "env": c["Config"]["Env"]} for c in json.loads(podman("container", "inspect", *names))}


def image_ids() -> set[str]:
    return set(podman("images", "-q", "--no-trunc").replace("sha256:", "").split())


def component(dev: Device) -> dict[str, Any]:
    return next(c for c in dev.ex.components() if c["name"] == "stack")


def test_deploy_two_services_from_an_image_archive_then_upgrades_prune_old_images(dev: Device, images: Images) -> None:
    r = dev.run(action(dev, images, "1"))
    assert r.final[:2] == ("succeeded", "stack 1.0.0 is installed by the container module"), r.items
    live = containers()
    assert sorted(live) == sorted(f"fleet-stack-{s}-1.0.0-{tok}" for s in ("db", "web")
                                  for tok in {n.rsplit("-", 1)[1] for n in live})
    db, web = (next(c for n, c in live.items() if f"-{s}-" in n) for s in ("db", "web"))
    assert db["status"] == web["status"] == "running"
    assert db["started"] < web["started"], "depends_on: db (healthy first) started before web"
    assert images.ids["1"] in db["image"] and "RELEASE=1" in web["env"]
    comp = component(dev)
    assert (comp["version"], comp["state"], comp["health"], comp["restarts"]) == ("1.0.0", "running", "healthy", 0)

    assert dev.run(action(dev, images, "2")).final[0] == "succeeded"
    live = containers()
    assert len(live) == 2 and all("-2.0.0-" in n and c["status"] == "running" for n, c in live.items())
    assert {images.ids["1"], images.ids["2"]} <= image_ids(), "one previous version's images kept"
    assert dev.run(action(dev, images, "3")).final[0] == "succeeded"
    assert images.ids["1"] not in image_ids() and {images.ids["2"], images.ids["3"]} <= image_ids()
    records = sorted(p.name for p in (dev.root / "updates/stack/container").iterdir())
    assert len(records) == 3 and "current.json" in records, "the current and the previous release's specs"

    # Containers stopped behind the agent's back (a reboot without systemd) come back at its start.
    podman("stop", "-a", "-t", "2")
    assert component(dev)["state"] == "failed"
    dev.ex.stop()
    dev.ex = dev.executor()
    dev.ex.start()
    assert all(c["status"] == "running" for c in containers().values())
    assert component(dev)["health"] == "healthy"


def test_a_release_whose_healthcheck_fails_is_rolled_back_to_the_previous_images_and_spec(
        dev: Device, images: Images) -> None:
    assert dev.run(action(dev, images, "1")).final[0] == "succeeded"
    before = containers()
    state, message, _ = dev.run(action(dev, images, "2", web_check="false")).final
    assert state == "rolled_back", message
    assert "service web's healthcheck failed 2 times in a row" in message and "rolled back to version 1.0.0" in message
    after = containers()
    assert sorted(after) == sorted(before), "the previous release's containers, none of the broken one's"
    assert all(c["status"] == "running" and images.ids["1"] in c["image"] for c in after.values())
    assert images.ids["2"] not in image_ids(), "the failed release's images are removed"
    comp = component(dev)
    assert (comp["version"], comp["state"], comp["health"]) == ("1.0.0", "running", "healthy")


def test_a_power_cut_mid_switch_leaves_the_previous_release_running_then_the_action_finishes(
        dev: Device, images: Images) -> None:
    assert dev.run(action(dev, images, "1")).final[0] == "succeeded"
    before = containers()
    dev.ex.stop()
    act = action(dev, images, "2")
    root = dev.root
    (root / "blobs").mkdir(exist_ok=True)
    (root / "blobs" / act["artifact"]["sha256"]).write_bytes(dev.server.blobs[act["artifact"]["sha256"]])
    (root / "action.json").write_text(json.dumps(act))
    env = dict(os.environ, **{CRASH_ENV: "mod-container-switching", "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "agent"), str(REPO / "src")])})
    r = subprocess.run([sys.executable, "-m", "tests.agent.apps_support", "install", str(root)], env=env,
                       cwd=REPO, capture_output=True, timeout=120)
    assert r.returncode == CRASH_EXIT, r.stderr.decode()[-2000:]
    mid = containers()
    assert any("-2.0.0-" in n and c["status"] == "running" for n, c in mid.items()), "cut with the new one up"
    assert all(c["status"] == "exited" for n, c in mid.items() if n in before), "and the old one stopped"

    dev.ex = dev.executor()
    dev.ex.start()  # recovers: the cut install is undone
    assert sorted(containers()) == sorted(before)
    assert all(c["status"] == "running" for c in containers().values())
    assert not (root / "updates/stack/job.json").exists(), "undone: the action runs again"
    assert dev.run(act).final[0] == "succeeded"
    assert all("-2.0.0-" in n and c["status"] == "running" for n, c in containers().items())


def test_a_refused_release_changes_nothing(dev: Device, images: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dev.run(action(dev, images, "1")).final[0] == "succeeded"
    before = containers()

    def refused(data: bytes, meta: dict[str, str] | None = None) -> str:
        art = dev.artifact(data, "2.0.0", name="stack", module="container", meta=meta, file_name="stack-2.tar")
        state, message, _ = dev.run(make_action(art)).final
        assert state == "failed"
        assert containers() == before and component(dev)["version"] == "1.0.0"
        return message

    # The spec names an image the artifact does not ship (v2's spec, v1's images) and does not pin by digest.
    assert "services.web.image: 'localhost/fleet-test/app:2' is neither in the artifact's image archives nor " \
           "pinned by digest" in refused(artifact(images, "2", shipped="1"))
    bad_port = spec("2").replace('"environment"', '"ports": ["70000"], "environment"', 1)
    assert "compose.yaml: services.web.ports[0]: '70000' must be" in refused(artifact(images, "2", compose=bad_port))
    assert "health_window 'soon' must be a number of seconds" in refused(artifact(images, "2"),
                                                                          {"health_window": "soon"})
    monkeypatch.setenv("FLEET_AGENT_CONTAINER_RUNTIME", "/nonexistent/podman")
    assert "FLEET_AGENT_CONTAINER_RUNTIME=/nonexistent/podman is not an executable" in refused(artifact(images, "2"))


@pytest.mark.e2e
def test_a_container_deploy_through_a_real_server_shows_in_the_inventory(images: Images, tmp_path: Path) -> None:
    """`fleetd artifacts push … --module container`, a deploy, a real agent process: the release runs, and the
    device's components (CLI: devices show) carry its state and health."""
    from tests.e2e.server import ServerProcess, run_cli

    from .e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for
    from .test_e2e_modules import enroll, reported_modules

    server = ServerProcess(tmp_path / "data").start()
    agent = None
    try:
        admin = Admin(server)
        device = enroll(admin, server, tmp_path / "agent")
        agent = AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(tmp_path / "agent")],
                             tmp_path / "agent.log", agent_env(PYTHONPATH=str(ROOT / "agent"),
                                                               FLEET_AGENT_POLL_INTERVAL="0.5"))
        wait_for("the agent to list the container module", lambda: "container" in reported_modules(admin, device),
                 30, log=agent.log)
        bundle = tmp_path / "stack-1.0.0.tar"
        bundle.write_bytes(artifact(images, "1"))
        admin.push(bundle, "stack", "1.0.0", admin.device(device)["device_type"], "--module", "container",
                   "--meta", "health_window=20")
        admin.wait_action(device, admin.deploy(device, "stack@1.0.0"), {"succeeded"}, 60, log=agent.log)
        comp = wait_for("the release in the inventory", lambda: next(
            (c for c in admin.device(device).get("components") or [] if c["name"] == "stack"
             and c.get("state") == "running"), None), 20, log=agent.log)
        assert (comp["version"], comp["health"]) == ("1.0.0", "healthy")
        shown = run_cli("devices", "show", device, env={"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin.key,
                                                        "FLEETD_CA": server.ca}).stdout
        assert "stack" in shown and "healthy" in shown, shown
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        reset()


def test_an_oci_archive_ships_the_images_too(dev: Device, images: Images, tmp_path: Path) -> None:
    docker_archive = tmp_path / "docker.tar"
    docker_archive.write_bytes(images.archives["1"])
    podman("load", "-q", "-i", str(docker_archive))
    podman("save", "-q", "--format", "oci-archive", "-o", str(tmp_path / "oci.tar"), "localhost/fleet-test/app:1")
    podman("rmi", "localhost/fleet-test/app:1")
    one = json.dumps({"services": {"one": {"image": "localhost/fleet-test/app:1", "command": ["/bin/sh", "-c", LOOP]}}})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(tmp_path / "oci.tar", arcname="images.tar")
        info = tarfile.TarInfo("compose.yaml")
        info.size = len(one)
        t.addfile(info, io.BytesIO(one.encode()))
    art = dev.artifact(buf.getvalue(), "1.0.0", name="stack", module="container", meta={"health_window": "20"},
                       file_name="stack-oci.tar")
    assert dev.run(make_action(art)).final[0] == "succeeded"
    (one_container,) = (c for n, c in containers().items() if n.startswith("fleet-stack-one-1.0.0-"))
    assert one_container["status"] == "running" and images.ids["1"] in one_container["image"]
