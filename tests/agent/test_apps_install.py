"""Installing apps with the Executor: real files, real processes, a blob server answering like fleetd."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.apps_support import (
    SIGNING_KEY,
    Device,
    crashing_app,
    heartbeat_advances,
    heartbeat_app,
    make_action,
    make_artifact,
    read_heartbeat,
    wait_until,
)

# Good versions pass a zero-length health window at once; the window itself is tested with WINDOW.
GRACE = {"health": {"grace_seconds": 0}}
WINDOW = {"health": {"grace_seconds": 1}}


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path / "state")
    d.ex.start()
    yield d
    d.ex.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_an_app_is_installed_started_and_kept_running(dev: Device) -> None:
    r = dev.install(heartbeat_app("1.0.0"), "1.0.0", WINDOW)
    assert r.final[0] == "succeeded", r.items
    states = r.states
    assert states[0] == "downloading" and states.index("verifying") < states.index("installing")
    assert "running and passed its health check" in r.final[1]
    assert dev.current() == "1.0.0"
    assert heartbeat_advances(dev.app() / "1.0.0")
    assert dev.state() == {"version": "1.0.0", "previous_version": None, "state": "running", "health": "healthy",
                           "restarts": 0, "last_error": ""}
    assert dev.ex.components() == [{"name": "app", "version": "1.0.0", "state": "running", "health": "healthy",
                                    "restarts": 0}]
    assert not list((dev.root / "staging").iterdir()), "the download is removed once installed"
    assert "[fleet-agent" in (dev.app() / "log").read_text()


def test_a_new_version_replaces_the_old_one_and_keeps_it_as_previous(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    old_pid = dev.pid()
    r = dev.install(heartbeat_app("1.1.0"), "1.1.0", GRACE)
    assert r.final[0] == "succeeded" and "(was 1.0.0)" in r.final[1]
    assert dev.current() == "1.1.0"
    assert not alive(old_pid)
    assert heartbeat_advances(dev.app() / "1.1.0")
    assert dev.state()["previous_version"] == "1.0.0"
    assert sorted(p.name for p in dev.app().iterdir() if p.is_dir() and not p.is_symlink()) == ["1.0.0", "1.1.0"]


def test_a_version_that_exits_at_once_is_rolled_back(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    r = dev.install(crashing_app("2.0.0"), "2.0.0", WINDOW)
    state, message, _ = r.final
    assert state == "rolled_back", r.items
    assert "app 2.0.0 failed its health check" in message and "exited (code 3)" in message
    assert "went back to 1.0.0" in message
    assert dev.current() == "1.0.0"
    assert heartbeat_advances(dev.app() / "1.0.0")
    assert not (dev.app() / "2.0.0").exists()
    assert dev.state()["version"] == "1.0.0" and "2.0.0 failed" in dev.state()["last_error"]
    assert dev.ex.components()[0]["version"] == "1.0.0"
    assert "cannot start: no camera" in (dev.app() / "log").read_text()


def test_a_failing_first_install_is_stopped_and_reported_failed(dev: Device) -> None:
    r = dev.install(crashing_app("1.0.0"), "1.0.0", {"restart": "always", "health": {"grace_seconds": 1}})
    assert r.final[0] == "failed" and "no previous version to go back to" in r.final[1]
    time.sleep(0.6)  # past the first restart backoff: it must stay stopped
    assert dev.ex.sup.status("app").state == "stopped"
    assert dev.ex.components() == [{"name": "app", "version": "1.0.0", "state": "failed", "health": "unhealthy",
                                    "restarts": 0}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HTTP_APP = f"""#!{sys.executable}
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(os.environ["STATUS"]))
        self.end_headers()
        self.wfile.write(os.environ["FLEET_APP_VERSION"].encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def test_a_version_that_fails_its_http_probe_is_rolled_back(dev: Device) -> None:
    port = free_port()
    health = {"grace_seconds": 1, "http_url": f"http://127.0.0.1:{port}/healthz"}
    good = dev.install(HTTP_APP.encode(), "1.0.0", {"env": {"PORT": str(port), "STATUS": "200"}, "health": health})
    assert good.final[0] == "succeeded", good.items
    bad = dev.install(HTTP_APP.encode() + b"# 2\n", "2.0.0",
                      {"env": {"PORT": str(port), "STATUS": "503"}, "health": health})
    assert bad.final[0] == "rolled_back", bad.items
    assert f"the health URL http://127.0.0.1:{port}/healthz answered HTTP 503" in bad.final[1]
    r = wait_until(lambda: _get(f"http://127.0.0.1:{port}/"), what="the old version to answer again")
    assert r.status_code == 200 and r.text == "1.0.0"


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None


def test_a_version_that_fails_its_command_probe_is_rolled_back(dev: Device) -> None:
    ok = {"grace_seconds": 1, "command": ["test", "-f", "heartbeat"]}
    assert dev.install(heartbeat_app("1.0.0"), "1.0.0", {"health": ok}).final[0] == "succeeded"
    bad = {"grace_seconds": 1, "command": ["sh", "-c", "echo camera not found >&2; exit 4"]}
    r = dev.install(heartbeat_app("1.1.0"), "1.1.0", {"health": bad})
    assert r.final[0] == "rolled_back"
    assert "exited with code 4: camera not found" in r.final[1]
    assert dev.current() == "1.0.0" and heartbeat_advances(dev.app() / "1.0.0")


def test_a_tampered_download_fails_and_nothing_is_switched(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    art = dev.artifact(heartbeat_app("2.0.0"), "2.0.0", install=GRACE)
    dev.server.blobs[art["sha256"]] = heartbeat_app("2.0.1")  # same size, other bytes
    r = dev.run(make_action(art))
    assert r.final[0] == "failed" and "SHA-256" in r.final[1]
    assert "installing" not in r.states
    assert dev.current() == "1.0.0" and not (dev.app() / "2.0.0").exists()
    assert heartbeat_advances(dev.app() / "1.0.0")


def test_a_tampered_manifest_is_refused_before_downloading(dev: Device) -> None:
    art = dev.artifact(heartbeat_app("1.0.0"), "1.0.0")
    art["manifest"] = art["manifest"].replace('"install":null', '"install":{"command":["rm","-rf","/"]}')
    r = dev.run(make_action(art))
    assert r.states == ["failed"]
    assert "refused: the manifest signature does not verify" in r.final[1]
    assert dev.server.requests == [] and not dev.app().exists()


@pytest.mark.parametrize("file_name", ["nul\0.sh", "../x", ".fleet-manifest.json", "rlo\u202ehs.exe", "x.sh\n"])
def test_a_signed_file_name_that_is_not_one_safe_file_is_refused_before_downloading(dev: Device,
                                                                                    file_name: str) -> None:
    # Signed by the fleet key: the server's own checks were bypassed or the server is not to be trusted.
    r = dev.run(make_action(dev.artifact(heartbeat_app("1.0.0"), "1.0.0", file_name=file_name)))
    assert r.states == ["failed"] and r.final[1].startswith(f"refused: file name {file_name!r} must "), r.final
    assert dev.server.requests == [] and not dev.app().exists()
    assert not list(dev.root.rglob("x"))


def resigned(art: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``art`` with ``old`` replaced by ``new`` in its manifest, signed again by the fleet key (fleetd's
    own checks would refuse to make it)."""
    from fleetd.artifacts.catalog import sign

    manifest = art["manifest"].replace(old, new)
    return {**art, "manifest": manifest, "signature": sign(SIGNING_KEY, manifest.encode())}


def test_a_signed_sha256_that_is_not_a_digest_is_refused_before_downloading(dev: Device) -> None:
    # The digest names the download's file in staging/.
    art = dev.artifact(heartbeat_app("1.0.0"), "1.0.0")
    art = {**resigned(art, art["sha256"], "../../evil"), "sha256": "../../evil"}
    r = dev.run(make_action(art))
    assert r.states == ["failed"] and r.final[1].startswith("refused: sha256 '../../evil' must be"), r.final
    assert dev.server.requests == [] and not list(dev.root.parent.rglob("evil*"))


def test_an_install_spec_env_name_that_is_not_a_name_is_refused(dev: Device) -> None:
    art = dev.artifact(heartbeat_app("1.0.0"), "1.0.0", install={"env": {"OK": "1"}, **GRACE})
    r = dev.run(make_action(resigned(art, '"OK":', '"OK\\nExecStartPre=/bin/evil":')))
    assert r.final[0] == "failed", r.items
    assert r.final[1].startswith("refused: the install spec's env name 'OK\\nExecStartPre=/bin/evil' must be")
    assert not (dev.app() / "current").exists()


def test_an_artifact_for_another_device_type_is_refused(dev: Device) -> None:
    r = dev.run(make_action(dev.artifact(heartbeat_app("1.0.0"), "1.0.0", device_types=("linux-armv7l",))))
    assert r.final[0] == "failed" and "not for this device's 'test-dev'" in r.final[1]


def tar_gz(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, content or None, symlink target or "") → a .tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content, link in entries:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert content is not None
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_an_archive_is_unpacked_and_run_with_its_install_spec(dev: Device) -> None:
    data = tar_gz([("run.sh", heartbeat_app("1.0.0"), ""), ("lib/data.txt", b"hello", ""),
                   ("data-link", None, "lib/data.txt")])
    r = dev.install(data, "1.0.0", {"command": ["./run.sh"], "health": {"grace_seconds": 1}},
                    file_name="app-1.0.0.tar.gz")
    assert r.final[0] == "succeeded", r.items
    vdir = dev.app() / "1.0.0"
    assert (vdir / "data-link").read_bytes() == b"hello"
    assert heartbeat_advances(vdir)


@pytest.mark.parametrize(("entries", "reason"), [
    ([("../evil.sh", b"#!/bin/sh\n", "")], "climbs out of its folder"),
    ([("ok/../../evil.sh", b"#!/bin/sh\n", "")], "climbs out of its folder"),
    ([("/tmp/evil.sh", b"#!/bin/sh\n", "")], "absolute"),
    ([("escape", None, "../../..")], "resolves outside its folder"),
    ([("escape", None, "/etc")], "points to an absolute"),
    # Lexically inside ("here/../x" is "x"), really outside: "here" is the folder itself.
    ([("here", None, "."), ("there", None, "here/../x")], "outside"),
    ([("dir", None, "."), ("dir/x.sh", b"x", "")], "through a symlink it made"),
    ([(".fleet-manifest.json", b"{}", "")], "may not contain"),
])
def test_an_archive_that_writes_outside_its_folder_is_refused(dev: Device, entries: list[tuple[str, bytes | None,
                                                                                                 str]],
                                                               reason: str) -> None:
    r = dev.install(tar_gz(entries), "1.0.0", {"command": ["./run.sh"]}, file_name="app-1.0.0.tgz")
    assert r.final[0] == "failed" and reason in r.final[1], r.items
    assert not (dev.app() / "1.0.0").exists() and dev.ex.components() == []
    assert not (dev.root / "apps" / "evil.sh").exists() and not (dev.root / "evil.sh").exists()


def test_a_zip_with_parent_entries_is_refused_and_a_good_zip_keeps_exec_bits(dev: Device) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.sh", "#!/bin/sh\n")
    r = dev.install(buf.getvalue(), "1.0.0", {"command": ["./run.sh"]}, file_name="app-1.0.0.zip")
    assert r.final[0] == "failed" and "climbs out" in r.final[1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("run.sh")
        info.external_attr = 0o100755 << 16
        z.writestr(info, heartbeat_app("1.0.1"))
    r = dev.install(buf.getvalue(), "1.0.1", {"command": ["./run.sh"], **GRACE}, file_name="app-1.0.1.zip")
    assert r.final[0] == "succeeded", r.items


def test_an_archive_without_a_command_is_refused_before_switching(dev: Device) -> None:
    r = dev.install(tar_gz([("run.sh", b"#!/bin/sh\n", "")]), "1.0.0", None, file_name="app-1.0.0.tar.gz")
    assert r.final[0] == "failed" and "must give the command to run" in r.final[1]
    assert dev.ex.components() == []


def test_an_older_version_needs_a_rollback_action(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    dev.install(heartbeat_app("2.0.0"), "2.0.0", GRACE)
    old = make_artifact(heartbeat_app("1.0.0"), version="1.0.0", install=GRACE)
    r = dev.run(make_action(old))
    assert r.final[0] == "failed" and "older than the installed 2.0.0; use a rollback" in r.final[1]
    requests = len(dev.server.requests)
    r = dev.run(make_action(old, kind="rollback"))
    assert r.final[0] == "succeeded", r.items
    assert len(dev.server.requests) == requests, "the previous version was still on disk: no download"
    assert dev.current() == "1.0.0" and heartbeat_advances(dev.app() / "1.0.0")


def test_a_rollback_without_a_previous_version_removes_the_app(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    pid = dev.pid()
    r = dev.run(make_action(None, kind="rollback", component="app", params={"no_previous_version": True}))
    assert r.final[0] == "succeeded" and "removed app 1.0.0" in r.final[1]
    assert not dev.app().exists() and dev.ex.components() == []
    wait_until(lambda: not alive(pid), what="the app to stop")
    r = dev.run(make_action(None, kind="rollback", component="app", params={"no_previous_version": True}))
    assert r.final == ("succeeded", "app is not installed; nothing to remove", 100)


def test_restart_gives_a_new_process(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    pid = dev.pid()
    r = dev.run(make_action(None, kind="restart", component="app"))
    assert r.final[0] == "succeeded" and dev.pid() != pid and not alive(pid)
    assert heartbeat_advances(dev.app() / "1.0.0")
    r = dev.run(make_action(None, kind="restart", component="nope"))
    assert r.final == ("failed", "no app 'nope' is installed on this device", 0)


def test_config_is_written_for_the_app_which_is_restarted(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    pid = dev.pid()
    r = dev.run(make_action(None, kind="config", component="app", params={"fps": "30"}))
    assert r.final[0] == "succeeded" and "restarted app" in r.final[1]
    assert json.loads((dev.app() / "config.json").read_text()) == {"fps": "30"}
    assert dev.pid() != pid
    r = dev.run(make_action(None, kind="config", component="", params={"log_level": "debug"}))
    assert r.final[0] == "succeeded"
    assert json.loads((dev.root / "config.json").read_text())["log_level"] == "debug"


def test_reboot_reports_success_before_rebooting(dev: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = dev.root / "rebooted"
    monkeypatch.setenv("FLEET_AGENT_REBOOT_CMD", f"touch {marker}")
    seen: list[bool] = []
    dev.ex.execute(make_action(None, kind="reboot", component=""), lambda s, m, p: seen.append(marker.exists()))
    assert seen == [False] and marker.exists()


def test_an_agent_restart_brings_the_apps_back(dev: Device) -> None:
    dev.install(heartbeat_app("1.0.0"), "1.0.0", GRACE)
    pid = dev.pid()
    dev.ex.stop()
    assert not alive(pid)
    dev.ex = dev.executor()
    dev.ex.start()
    assert heartbeat_advances(dev.app() / "1.0.0")
    assert dev.ex.components()[0]["state"] == "running"


def test_a_crash_looping_app_counts_restarts(dev: Device) -> None:
    flaky = b"#!/bin/sh\nsleep 1.2\nexit 1\n"
    r = dev.install(flaky, "1.0.0", {"restart": "on-failure", "health": {"grace_seconds": 1}})
    assert r.final[0] == "succeeded"
    wait_until(lambda: dev.ex.components()[0]["restarts"] >= 1, timeout=5, what="a restart")
    assert read_heartbeat(dev.app() / "1.0.0") == 0.0


def test_required_offline_signatures_are_enforced(dev: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleetd.artifacts.catalog import sign

    offline = Ed25519PrivateKey.generate()
    public = offline.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    monkeypatch.setenv("FLEET_AGENT_OFFLINE_KEYS", base64.b64encode(public).decode())
    dev.ex = dev.executor()
    art = dev.artifact(heartbeat_app("1.0.0"), "1.0.0", install=GRACE)
    r = dev.run(make_action(art))
    assert r.final[0] == "failed" and "requires an offline signature" in r.final[1]
    art["offline_signatures"] = [{"public_key": base64.b64encode(public).decode(),
                                  "signature": sign(offline, art["manifest"].encode())}]
    assert dev.run(make_action(art)).final[0] == "succeeded"
    monkeypatch.setenv("FLEET_AGENT_OFFLINE_KEYS", "not-a-key")
    with pytest.raises(ValueError, match="FLEET_AGENT_OFFLINE_KEYS: 'not-a-key' is not a base64 Ed25519"):
        dev.executor()


def test_an_offered_install_is_accepted_first(dev: Device) -> None:
    action = make_action(dev.artifact(heartbeat_app("1.0.0"), "1.0.0", install=GRACE))
    action["state"] = "offered"
    r = dev.run(action)
    assert r.states[0] == "accepted" and r.final[0] == "succeeded"
