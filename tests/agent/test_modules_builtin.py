"""The built-in file and directory modules through the sequence driver, on a real Executor and state dir."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from fleet_agent.modules import ModuleName, available
from tests.agent.apps_support import Device, make_action


@pytest.fixture
def dev(tmp_path: Path) -> Device:
    d = Device(tmp_path / "state")
    d.ex.start()
    yield d
    d.ex.stop()


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def install(dev: Device, data: bytes, version: str, module: str, dest: Path, *, file_name: str | None = None,
            rollback: bool = False, **meta: str) -> tuple[str, str]:
    art = dev.artifact(data, version, name="conf", module=module, meta={"path": str(dest), **meta},
                       file_name=file_name or f"conf-{version}.txt")
    action = make_action(art, kind="rollback" if rollback else "install")
    r = dev.run(action)
    return r.final[0], r.final[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".fleet-new" in p.name or p.name.startswith(".trash"))


def test_the_built_in_modules_are_listed_first(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [m.value for m in ModuleName] == ["app", "file", "directory", "container", "os-image"]
    for env in ("FLEET_AGENT_CONTAINER_RUNTIME", "FLEET_AGENT_RAUC"):
        monkeypatch.setenv(env, "/bin/true")  # any executable: the tool is there
    assert available(Path("/nonexistent")) == ["app", "file", "directory", "container", "os-image"]
    for env in ("FLEET_AGENT_CONTAINER_RUNTIME", "FLEET_AGENT_RAUC", "FLEET_AGENT_SWUPDATE"):
        monkeypatch.setenv(env, "/nonexistent/tool")
    assert available(Path("/nonexistent")) == ["app", "file", "directory"], "container and os-image need their tools"
    for env in ("FLEET_AGENT_CONTAINER_RUNTIME", "FLEET_AGENT_RAUC", "FLEET_AGENT_SWUPDATE"):
        monkeypatch.delenv(env)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not {"container", "os-image"} & set(available(Path("/nonexistent"))), "no podman, docker, rauc, swupdate"


def test_the_file_module_replaces_a_file_and_keeps_the_previous(dev: Device, tmp_path: Path) -> None:
    dest = tmp_path / "etc" / "app.conf"
    dest.parent.mkdir()
    dest.write_text("hand-written\n")
    assert install(dev, b"one\n", "1.0.0", "file", dest, mode="0600") == (
        "succeeded", "conf 1.0.0 is installed by the file module")
    assert dest.read_text() == "one\n" and dest.stat().st_mode & 0o777 == 0o600
    backups = list(dest.parent.glob(".app.conf.fleet-prev-*"))
    assert [b.read_text() for b in backups] == ["hand-written\n"]
    state, message = install(dev, b"two\n", "1.1.0", "file", dest)
    assert (state, message) == ("succeeded", "conf 1.1.0 is installed by the file module (was 1.0.0)")
    assert [b.read_text() for b in dest.parent.glob(".app.conf.fleet-prev-*")] == ["one\n"], "one previous kept"
    assert leftovers(dest.parent) == [] and not (dev.root / "updates/conf/tree").exists()
    comp = next(c for c in dev.ex.components() if c["name"] == "conf")
    assert (comp["version"], comp["state"]) == ("1.1.0", "installed")
    # Installed again: nothing to do. Older without a rollback: refused.
    assert install(dev, b"two\n", "1.1.0", "file", dest)[0] == "succeeded"
    state, message = install(dev, b"one\n", "1.0.0", "file", dest)
    assert state == "failed" and "older than the installed 1.1.0" in message
    # A rollback action brings the previous version back through the module (it supports rollback).
    assert install(dev, b"one\n", "1.0.0", "file", dest, rollback=True)[0] == "succeeded"
    assert dest.read_text() == "one\n"


def test_a_bad_destination_changes_nothing(dev: Device, tmp_path: Path) -> None:
    state, message = install(dev, b"x", "1.0.0", "file", tmp_path / "missing" / "app.conf")
    assert state == "failed" and "does not exist on this device; create it first" in message
    assert not (dev.root / "updates" / "conf").exists()
    state, message = install(dev, b"x", "1.0.0", "no-such-module", tmp_path / "app.conf")
    assert state == "failed" and "this device has no update module 'no-such-module'" in message


def test_the_directory_module_switches_a_tree(dev: Device, tmp_path: Path) -> None:
    dest = tmp_path / "www"
    v1 = tarball({"index.html": b"v1", "img/logo.svg": b"<svg/>"})
    assert install(dev, v1, "1.0.0", "directory", dest, file_name="site-1.0.0.tar.gz")[0] == "succeeded"
    assert (dest / "index.html").read_bytes() == b"v1" and (dest / "img/logo.svg").is_file()
    v2 = tarball({"index.html": b"v2"})
    assert install(dev, v2, "2.0.0", "directory", dest, file_name="site-2.0.0.tar.gz")[0] == "succeeded"
    assert sorted(os.listdir(dest)) == ["index.html"] and (dest / "index.html").read_bytes() == b"v2"
    backups = list(tmp_path.glob(".www.fleet-prev-*"))
    assert len(backups) == 1 and (backups[0] / "index.html").read_bytes() == b"v1"
    installed = json.loads((dev.root / "updates/conf/installed.json").read_text())
    assert installed["module"] == "directory" and installed["previous_version"] == "1.0.0"
    assert leftovers(tmp_path) == []


def test_an_unsafe_archive_is_refused_before_anything_changes(dev: Device, tmp_path: Path) -> None:
    dest = tmp_path / "www"
    state, message = install(dev, tarball({"../escape": b"x"}), "1.0.0", "directory", dest,
                             file_name="site.tar.gz")
    assert state == "failed" and "climbs out of its folder" in message
    assert not dest.exists() and not (tmp_path / "escape").exists()


def test_a_component_keeps_its_module(dev: Device, tmp_path: Path) -> None:
    from tests.agent.apps_support import heartbeat_app

    assert install(dev, b"one\n", "1.0.0", "file", tmp_path / "app.conf")[0] == "succeeded"
    state, message = install(dev, tarball({"a": b""}), "2.0.0", "directory", tmp_path / "www",
                             file_name="x.tar.gz")
    assert state == "failed" and "conf is installed by the file module on this device" in message
    assert dev.install(heartbeat_app("1.0.0"), "1.0.0", {"health": {"grace_seconds": 0}}).final[0] == "succeeded"
    art = dev.artifact(b"x", "2.0.0", name="app", module="file", meta={"path": str(tmp_path / "x")})
    r = dev.run(make_action(art))
    assert r.final[0] == "failed" and "app is installed as an app on this device" in r.final[1]


def test_a_failed_download_leaves_no_sequence_behind(dev: Device, tmp_path: Path) -> None:
    from tests.agent.apps_support import make_artifact

    art = make_artifact(b"never served", name="conf", module="file", meta={"path": str(tmp_path / "c")})
    r = dev.run(make_action(art))
    assert r.final[0] == "failed", r.items
    assert not (dev.root / "updates" / "conf").exists() and not (tmp_path / "c").exists()
