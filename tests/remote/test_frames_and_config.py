"""The channel's framing is the same on both ends; the device's agent.conf reads as documented; session grants are
single use, bound to their session, and only for the remote role."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from fleet_agent import remote as agent_remote
from fleet_agent import remote_terminal
from fleet_agent.config import ConfigError
from fleet_agent.remote_config import RemoteConfig, load
from fleetd.accounts import audit
from fleetd.accounts.users import Principal
from fleetd.core.config import load_settings
from fleetd.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from fleetd.fleet import Fleet
from fleetd.remote import frames
from fleetd.remote.hub import Channel, Limits, RemoteHub


def test_the_agent_and_the_server_share_the_frame_table() -> None:
    assert {f.name: f.value for f in frames.Frame} == agent_remote.FRAMES
    assert list(agent_remote.KINDS) == [k.value for k in frames.Kind]
    for name in ("HEADER", "RESIZE", "CREDIT", "EXIT"):
        assert getattr(agent_remote, name).format == getattr(frames, name).format, name
    assert (agent_remote.WINDOW_BYTES, agent_remote.MAX_FRAME) == (frames.WINDOW_BYTES, frames.MAX_FRAME)


def test_frames_round_trip_and_bad_ones_are_named() -> None:
    assert frames.unpack(frames.pack(7, frames.Frame.DATA, b"ls\n")) == (7, frames.Frame.DATA, b"ls\n")
    with pytest.raises(InvalidArgument, match="at least 5 bytes"):
        frames.unpack(b"\0\0")
    with pytest.raises(InvalidArgument, match="unknown channel frame type 99"):
        frames.unpack(b"\0\0\0\1\x63")
    with pytest.raises(InvalidArgument, match="at most"):
        frames.unpack(b"\0" * (frames.MAX_FRAME + 1))


def test_channel_urls() -> None:
    assert agent_remote.channel_url("https://fleet.local:8420/") == "wss://fleet.local:8420/v1/remote/device"
    assert agent_remote.channel_url("http://10.0.0.5:8420") == "ws://10.0.0.5:8420/v1/remote/device"


def test_agent_conf(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    assert load(conf) == RemoteConfig(path=str(conf))  # no file: off
    conf.write_text('# the owner allows it\nremote_access = true  # yes\nremote_user = "pi"\n'
                    "remote_shell = '/bin/bash'\n")
    assert load(conf) == RemoteConfig(True, "pi", "/bin/bash", str(conf))
    for text, match in [("remote_access = yes\n", "true, false or a quoted string"),
                        ("remote_acces = true\n", "line 1: expected one of remote_access"),
                        ('remote_access = "true"\n', "remote_access is true or false"),
                        ("remote_user = true\n", "quoted strings"),
                        ('remote_user = "pi" extra\n', "a quoted string")]:
        conf.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load(conf)


def test_a_root_agent_needs_remote_user_to_run_terminals(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as root only")
    with pytest.raises(agent_remote.Refused, match="remote_user is not set"):
        remote_terminal.session_user(RemoteConfig(True, "", "", "agent.conf"))
    with pytest.raises(agent_remote.Refused, match="is not a user on this device"):
        remote_terminal.session_user(RemoteConfig(True, "no-such-user-here", "", "agent.conf"))
    assert remote_terminal.session_user(RemoteConfig(True, "root", "", "agent.conf")).pw_uid == 0


ADMIN = Principal("key", "k1", "ops", "admin")


def hub(role: str = "admin", key: bytes = b"k" * 32) -> RemoteHub:
    return RemoteHub(None, key, Limits(2, 10, 60.0, role))


async def _nothing(_: object) -> None:
    return None


def with_channel(h: RemoteHub, device: str = "dev_1") -> RemoteHub:
    h.channels[device] = Channel(device, _nothing, _nothing, {})
    return h


def test_a_grant_is_single_use_and_bound_to_its_session() -> None:
    h = with_channel(hub())
    g, token = h.grant(ADMIN, "10.0.0.9", "dev_1", "terminal", 100, 30, "uptime")
    assert (g.d, g.k, g.c, g.r, g.cmd, g.actor.name, g.actor.remote_addr) == ("dev_1", "terminal", 100, 30, "uptime",
                                                                              "ops", "10.0.0.9")
    assert h.redeem(token).s == g.s
    with pytest.raises(Unauthenticated, match="already used"):
        h.redeem(token)
    _, other = h.grant(ADMIN, None, "dev_1", "terminal", 80, 24, None)
    payload, _, mac = other.partition(".")[2].partition(".")
    forged = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["d"] = "dev_2"
    tampered = f"frs.{base64.urlsafe_b64encode(msgspec.json.encode(forged)).decode().rstrip('=')}.{mac}"
    with pytest.raises(Unauthenticated, match="not valid"):
        h.redeem(tampered)
    with pytest.raises(Unauthenticated, match="not valid"):
        hub(key=b"o" * 32).redeem(other)  # another fleet's key
    assert h.redeem(other)  # neither attempt spent it


def test_an_expired_grant_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    h = with_channel(hub())
    _, token = h.grant(ADMIN, None, "dev_1", "terminal", 80, 24, None)
    later = time.time() + 31
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated, match="expired"):
        h.redeem(token)


def test_only_the_remote_role_and_known_kinds_get_grants() -> None:
    h = with_channel(hub())
    for p in (Principal("key", "k2", "ro", "viewer"), Principal("user", "u1", "op", "operator"),
              Principal("device", "dev_1", "dev_1")):
        with pytest.raises(PermissionDenied, match="need the admin role"):
            h.grant(p, None, "dev_1", "terminal", 80, 24, None)
    assert with_channel(hub("operator")).grant(Principal("user", "u1", "op", "operator"), None, "dev_1", "terminal",
                                                80, 24, None)
    with pytest.raises(InvalidArgument, match="kind must be one of terminal"):
        h.grant(ADMIN, None, "dev_1", "files", 80, 24, None)
    with pytest.raises(InvalidArgument, match="cols and rows"):
        h.grant(ADMIN, None, "dev_1", "terminal", 0, 24, None)
    with pytest.raises(FailedPrecondition, match="no remote-access channel"):
        h.grant(ADMIN, None, "dev_2", "terminal", 80, 24, None)


class AgentSide:
    """The far end of a channel as a device's agent behaves (agent/fleet_agent/remote.py's answers to OPEN): it
    answers OPENED, or CLOSE with a reason when ``refuse`` is set."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.channel: Channel | None = None
        self.sent: list[tuple[int, frames.Frame, bytes]] = []

    async def send(self, message: bytes) -> None:
        sid, frame, payload = frames.unpack(message)
        self.sent.append((sid, frame, payload))
        if frame is frames.Frame.OPEN:
            assert self.channel is not None
            answer = (frames.pack(sid, frames.Frame.CLOSE, self.refuse.encode()) if self.refuse else
                      frames.pack_json(sid, frames.Frame.OPENED, {"user": "pi", "pid": 4242}))
            asyncio.get_running_loop().call_soon(self.channel.dispatch, answer)


def attach(h: RemoteHub, device: str, agent: AgentSide) -> None:
    agent.channel = h.channels[device] = Channel(device, agent.send, _nothing, {})


def test_sessions_open_up_to_the_caps_and_every_refusal_is_audited(fleet: Fleet) -> None:
    h = RemoteHub(fleet.store, b"k" * 32, Limits(per_device=2, total=3, idle_seconds=60.0, role="admin"))
    for d in ("dev_a", "dev_b", "dev_c"):
        attach(h, d, AgentSide())
    attach(h, "dev_no", AgentSide(refuse="remote_user is not set"))

    async def run() -> list[str]:
        got = []
        for device in ("dev_no", "dev_a", "dev_a", "dev_a", "dev_b", "dev_c"):
            _, token = h.grant(ADMIN, "10.0.0.9", device, "terminal", 80, 24, None)
            try:
                s = await h.open(h.redeem(token))
                got.append(f"{device} opened as {s.info['user']}")
            except (ResourceExhausted, FailedPrecondition) as e:
                got.append(f"{device}: {e.message}")
        return got

    got = asyncio.run(run())
    assert got[0] == "dev_no: device dev_no refused the session: remote_user is not set"  # and it counts for nothing
    assert got[1:3] == ["dev_a opened as pi"] * 2
    assert "remote_sessions_per_device" in got[3]
    assert got[4] == "dev_b opened as pi"
    assert "remote_sessions_total" in got[5]
    entries = fleet.store.read_sync(lambda c: audit.query(c, action="device.remote_session"))
    denied = sorted(e.details["reason"][:40] for e in entries if e.outcome == "denied")
    assert len(denied) == 3 and len([e for e in entries if e.action == "device.remote_session_open"]) == 3
    assert all(e.actor_name == "ops" and e.remote_addr == "10.0.0.9" for e in entries)


@pytest.mark.parametrize(("setting", "says"), [
    ({"remote_role": "owner"}, "remote_role must be viewer, operator or admin, got 'owner'"),
    ({"remote_sessions_per_device": 0}, "must be positive"),
    ({"remote_idle_seconds": "0"}, "must be positive"),
])
def test_remote_settings_are_checked(setting: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        load_settings(setting, None, {})
    assert load_settings({"remote_access": "true"}, None, {}).remote_access is True


def test_agent_conf_copy_dirs_and_forward(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(f'remote_access = true\nremote_copy_dirs = "{tmp_path}/a:/srv/b"\nremote_forward = true\n')
    got = load(conf)
    assert (got.copy_dirs, got.forward) == ((f"{tmp_path}/a", "/srv/b"), True)
    for text, match in [('remote_copy_dirs = "relative/dir"\n', "absolute directories"),
                        ("remote_copy_dirs = true\n", "remote_copy_dirs is a quoted string"),
                        ('remote_forward = "yes"\n', "remote_forward")]:
        conf.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load(conf)


INSTALL_SH = Path(__file__).resolve().parents[2] / "agent" / "install.sh"


@pytest.mark.parametrize(("args", "says"), [
    (["--remote-copy-dirs", "/srv/a"], "go with --remote-access"),
    (["--remote-forward"], "go with --remote-access"),
    (["--remote-access", "--remote-copy-dirs", "srv/a"], "absolute directories (starting with /), got 'srv/a'"),
    (["--remote-access", "--remote-copy-dirs", "/srv/a::/b"], "an empty directory"),
    (["--remote-access", "--remote-copy-dirs", "/srv/a:"], "an empty directory"),
    (["--remote-access", "--remote-copy-dirs", '/srv/a"\nremote_user = "root'], "letters, digits and . _ - + @ /"),
    (["--remote-access", "--remote-copy-dirs", "/srv/$(reboot)"], "letters, digits and . _ - + @ /"),
    (["--remote-access", "--remote-copy-dirs", "/srv/my dir"], "letters, digits and . _ - + @ /"),
])
def test_the_install_script_refuses_remote_options_it_cannot_write_safely(tmp_path: Path, args: list[str],
                                                                         says: str) -> None:
    """Checked before anything is installed: nothing under the prefix (the one-liner's own run writes agent.conf
    for real: tests/remote/test_remote_e2e.py, test_the_install_one_liner_turns_remote_access_on)."""
    p = subprocess.run(["sh", str(INSTALL_SH), "--server", "https://fleet.invalid", "--pin", "sha256//x", "--token",
                        "t", "--prefix", str(tmp_path / "root"), *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and says in p.stderr, p.stdout + p.stderr
    assert not (tmp_path / "root").exists()


def test_file_copy_stays_in_the_allowed_directories(tmp_path: Path) -> None:
    from fleet_agent import remote_streams

    ok = tmp_path / "ok"
    (ok / "sub").mkdir(parents=True)
    (ok / "out").symlink_to("/etc")
    (tmp_path / "ok-not").mkdir()
    conf = RemoteConfig(True, "root", "", "agent.conf", (str(ok),))
    assert remote_streams.allowed_path(conf, f"{ok}/sub/f.txt") == f"{ok}/sub/f.txt"
    assert remote_streams.allowed_path(conf, str(ok), top_ok=True) == str(ok)
    for raw in [str(ok), f"{ok}/out/passwd", f"{ok}/../ok-not/x", f"{tmp_path}/ok-not/x", "/etc/passwd"]:
        with pytest.raises(agent_remote.Refused, match="outside the directories"):
            remote_streams.allowed_path(conf, raw)
    with pytest.raises(agent_remote.Refused, match="absolute path"):
        remote_streams.allowed_path(conf, "ok/sub/f.txt")
    with pytest.raises(agent_remote.Refused, match="file copy is off on this device"):
        remote_streams.allowed_path(RemoteConfig(True, "root", "", "agent.conf"), f"{ok}/sub/f.txt")
    with pytest.raises(agent_remote.Refused, match="port forwarding is off"):
        remote_streams.open_stream("forward", 1, None, RemoteConfig(True, "root", "", "agent.conf"),  # type: ignore[arg-type]
                                   {"host": "127.0.0.1", "port": 80}, None, "")  # type: ignore[arg-type]


def test_session_options_are_checked_per_kind() -> None:
    from fleetd.remote.frames import Kind
    from fleetd.remote.hub import check_options

    assert check_options(Kind.FILE_PUT, {"path": "/srv/a", "size": 5, "name": "a"}, 10) == {
        "path": "/srv/a", "size": 5, "name": "a"}
    assert check_options(Kind.LOGS, {"app": "web"}, 10) == {"app": "web", "lines": 200, "follow": True}
    for kind, opts, match in [(Kind.TERMINAL, {"path": "/x"}, "takes no options"),
                              (Kind.FILE_GET, {"path": "rel"}, "absolute path"),
                              (Kind.FILE_GET, {}, "needs path"),
                              (Kind.FILE_PUT, {"path": "/a", "size": 11}, "at most 10 bytes"),
                              (Kind.FILE_PUT, {"path": "/a", "size": True}, "at most 10 bytes"),
                              (Kind.FORWARD, {"host": "db", "port": 0}, "port 1..65535"),
                              (Kind.FORWARD, {"host": "", "port": 5432}, "needs host"),
                              (Kind.LOGS, {"app": "web", "lines": 5000}, "lines must be 0..2000"),
                              (Kind.LOGS, {"app": "web", "cmd": "x"}, "not cmd")]:
        with pytest.raises(InvalidArgument, match=match):
            check_options(kind, opts, 10)
