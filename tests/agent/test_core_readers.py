"""Inventory, telemetry and identity readers against this machine and a crafted /proc + /sys tree;
join-token parsing, backoff and settings. Python 3.9 syntax, for every agent module: test_python_floor.py."""

from __future__ import annotations

import json
import os
import platform
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

import fleet_agent
from fleet_agent import identity, inventory, telemetry
from fleet_agent.cli import main
from fleet_agent.client import AgentError, parse_join_token
from fleet_agent.config import AgentState, ConfigError, Paths, Runtime, Settings
from fleet_agent.queue import DiskQueue
from fleet_agent.runloop import Backoff


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    files = {
        "proc/stat": "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\nintr 1\n",
        "proc/loadavg": "0.42 0.30 0.25 1/123 4567\n",
        "proc/meminfo": "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     600 kB\n"
                        "Buffers:           10 kB\nHugePages_Total:       0\n",
        "proc/uptime": "12345.67 40000.00\n",
        "proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00",
        "proc/device-tree/serial-number": "10000000a3c2b1f0\x00",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                          "ID=debian\n# a comment\n",
        "etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "sys/class/thermal/thermal_zone0/temp": "48312\n",
        "sys/class/thermal/thermal_zone1/type": "iwlwifi_1\n",
        "sys/class/thermal/thermal_zone1/temp": "61000\n",
        "sys/class/thermal/thermal_zone2/type": "broken\n",
        "sys/class/thermal/thermal_zone2/temp": "garbage\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


# --- telemetry -------------------------------------------------------------------

def test_telemetry_from_a_fake_tree(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert telemetry.read_cpu_times(root) == (150, 1000)  # idle = idle + iowait
    assert telemetry.read_loadavg(root) == (0.42, 0.30, 0.25)
    mem = telemetry.read_meminfo(root)
    assert mem["MemTotal"] == 1000 * 1024 and mem["MemAvailable"] == 600 * 1024 and mem["HugePages_Total"] == 0
    assert telemetry.read_uptime(root) == 12345.67
    # The CPU zone wins over a hotter Wi-Fi chip; an unreadable zone is skipped.
    assert telemetry.read_cpu_temp(root) == 48.31

    sampler = telemetry.Sampler(tmp_path, root=root)
    # 100 more busy and 100 more idle jiffies since the sampler was made: 50 %.
    (root / "proc/stat").write_text("cpu  200 0 50 850 100 0 0 0 0 0\n")
    points = {p["name"]: p for p in sampler.sample(now=1_800_000_000.0)}
    assert points["cpu.percent"]["value"] == 50.0
    assert points["mem.used"]["value"] == 400 * 1024 and points["mem.total"]["value"] == 1000 * 1024
    assert points["mem.available"]["value"] == 600 * 1024
    assert points["cpu.load1"]["value"] == 0.42 and points["cpu.load15"]["value"] == 0.25
    assert points["cpu.temp"]["value"] == 48.31 and points["uptime"]["value"] == 12345.67
    assert 0 < points["disk.used_percent"]["value"] < 100
    assert {p["ts"] for p in points.values()} == {1_800_000_000.0}
    # A board whose clock is in 1970 sends ts 0 ("when the server received it").
    assert {p["ts"] for p in sampler.sample(now=1000.0)} == {0.0}


def test_telemetry_with_nothing_to_read(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sampler = telemetry.Sampler(tmp_path / "nowhere", root=empty)
    assert sampler.sample() == []
    assert telemetry.read_cpu_temp(empty) is None


def test_telemetry_from_this_machine(tmp_path: Path) -> None:
    sampler = telemetry.Sampler(tmp_path)
    time.sleep(0.05)  # some jiffies (10 ms each) between the two readings
    points = {p["name"]: p["value"] for p in sampler.sample()}
    for name in ("cpu.percent", "cpu.load1", "cpu.load5", "cpu.load15", "mem.total", "mem.used", "mem.available",
                 "disk.used_percent", "uptime"):
        assert name in points, name
    assert 0 <= points["cpu.percent"] <= 100
    assert points["mem.used"] + points["mem.available"] == points["mem.total"]
    assert points["uptime"] > 0
    assert 0 <= points["disk.used_percent"] <= 100
    # The metric names are ones the server accepts.
    assert all(n[0].isalpha() and set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789._") for n in points)


# --- inventory ---------------------------------------------------------------------

def test_inventory_from_a_fake_tree(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert inventory.read_os_release(root)["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert inventory.read_model(root) == "Raspberry Pi 4 Model B Rev 1.4"
    inv = inventory.collect(root)
    assert inv["os"] == "Debian GNU/Linux 12 (bookworm)" and inv["os_version"] == "12"
    assert inv["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert inv["agent_version"] == fleet_agent.__version__


def test_inventory_of_this_machine() -> None:
    inv = inventory.collect()
    assert inv["hostname"] == socket.gethostname()
    assert inv["kernel"] == platform.release() and inv["arch"] == platform.machine()
    assert inv["os"]
    addrs = inv.get("addresses", [])
    assert "127.0.0.1" not in addrs and "::1" not in addrs
    # The same addresses iproute2 lists, loopback aside.
    p = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True)
    want = [a["local"] for link in json.loads(p.stdout) if "LOOPBACK" not in link["flags"]
            for a in link.get("addr_info", []) if a.get("scope") != "host"]
    assert addrs == list(dict.fromkeys(want))


def test_ip_json_parsing() -> None:
    text = json.dumps([
        {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [{"local": "127.0.0.1", "scope": "host"}]},
        {"ifname": "eth0", "flags": ["UP"], "addr_info": [
            {"family": "inet", "local": "192.168.1.23", "scope": "global"},
            {"family": "inet6", "local": "fe80::1c2b:3aff:fe4d:5e6f", "scope": "link"},
            {"family": "inet6", "local": "::1", "scope": "host"}]},
        {"ifname": "wlan0", "flags": ["UP"], "addr_info": [{"local": "192.168.1.23"}, {"local": "not-an-ip"}]},
    ])
    assert inventory.parse_ip_json(text) == ["192.168.1.23", "fe80::1c2b:3aff:fe4d:5e6f"]
    assert inventory.parse_ip_json("not json") == [] and inventory.parse_ip_json("{}") == []


# --- identity ----------------------------------------------------------------------

def test_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = identity.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = identity.load_or_create_key(path)
    assert identity.public_key_raw(again) == identity.public_key_raw(key)
    os.chmod(path, 0o644)
    identity.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        identity.load_or_create_key(path)


def test_hardware_id_prefers_the_board_serial(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert identity.detect_hardware_id(root) == "10000000a3c2b1f0"
    (root / "proc/device-tree/serial-number").unlink()
    (root / "proc/cpuinfo").write_text("processor\t: 0\nSerial\t\t: 0000000000000000\n")
    assert identity.detect_hardware_id(root) == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    (root / "etc/machine-id").unlink()
    with pytest.raises(ConfigError, match="--hardware-id"):
        identity.detect_hardware_id(root)
    with pytest.raises(ConfigError, match="hardware id"):
        identity.check_hardware_id("-bad id")
    with pytest.raises(ConfigError, match="device type"):
        identity.check_device_type("Linux-X86")
    assert identity.default_device_type() == f"linux-{platform.machine().lower()}"


# --- tokens, backoff, settings --------------------------------------------------------

def test_join_token_parsing() -> None:
    fp = "e4a238d73ace799dce8d85e27119c15a1fbd1f9e2b19db575d1ec6b9ec705ad5"
    tok = parse_join_token(f"  fdj1.{fp}.1c4efbcf3a71.34e4466f4a4f72bd2ead76bd266d4384\n")
    assert tok.ca_fingerprint == fp and tok.token.startswith("fdj1.") and tok.token.endswith("4384")
    secret = "34e4466f4a4f72bd2ead76bd266d4384"
    for bad in ("", "fdj2.x.y.z", f"fdj1.{fp}.1c4efbcf3a71", f"fdj1.{fp.upper()}.1c4efbcf3a71.{secret}"):
        with pytest.raises(AgentError) as e:
            parse_join_token(bad)
        assert e.value.code == "invalid_argument" and "fleetd tokens create" in e.value.message


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    b = Backoff(1.0, 300.0)
    delays = [b.next() for _ in range(12)]
    for i, d in enumerate(delays):
        base = min(300.0, 2.0 ** i)
        assert min(300.0, base * 0.8) <= d <= min(300.0, base * 1.2)
    assert delays[-1] <= 300.0
    assert b.next(at_least=400.0) == 400.0  # never sooner than Retry-After
    b.reset()
    assert b.next() <= 1.2


def test_settings_from_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env(None, {"FLEET_AGENT_STATE_DIR": str(tmp_path), "FLEET_AGENT_MAX_BACKOFF": "2",
                                 "FLEET_AGENT_MDNS_INTERFACES": "127.0.0.1, 10.0.0.2"})
    assert s.state_dir == tmp_path and s.max_backoff == 2.0 and s.mdns_interfaces == ["127.0.0.1", "10.0.0.2"]
    assert s.poll_interval is None and s.telemetry_max_bytes == 5 * 1024 * 1024
    assert Settings.from_env(str(tmp_path / "x"), {}).state_dir == tmp_path / "x"
    with pytest.raises(ConfigError, match="FLEET_AGENT_MAX_BACKOFF must be a number"):
        Settings.from_env(None, {"FLEET_AGENT_MAX_BACKOFF": "soon"})


# --- status, from the files alone -----------------------------------------------------------

def test_status_reads_apps_from_their_state_files_and_the_last_check_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    paths = Paths(tmp_path)
    AgentState(device_id="dev_0123456789ab", hardware_id="hw-1", device_type="linux-aarch64",
               server="https://10.0.0.2:8420", ca_fingerprint="ab" * 32, signing_public_key="A" * 43 + "=",
               status="active", name="kitchen-pi").save(paths)
    app = tmp_path / "apps" / "webcam"
    app.mkdir(parents=True)
    (app / "state.json").write_text(json.dumps({"version": "1.1.0", "previous_version": "1.0.0", "state": "failed",
                                                "health": "unhealthy", "restarts": 3, "last_error": "exit 1"}))
    DiskQueue(paths.reports_queue).put({"action_id": "act_1", "state": "failed"})
    monkeypatch.setenv("FLEET_AGENT_STATE_DIR", str(tmp_path))

    def status(*args: str) -> str:
        assert main(["status", *args]) == 0
        return capsys.readouterr().out

    st = json.loads(status("--json"))
    assert st["apps"] == [{"name": "webcam", "version": "1.1.0", "state": "failed", "health": "unhealthy",
                           "restarts": 3, "last_error": "exit 1"}]
    assert st["last_checkin"] is None and st["running"] is False
    assert st["queues"]["reports"]["items"] == 1 and st["queues"]["telemetry"]["items"] == 0

    # A running agent's last check-in: its executor's components, with the apps' last errors.
    Runtime(last_checkin=1_800_000_000.0, status="active", pid=os.getpid(),
            components=[{"name": "webcam", "version": "1.0.0", "state": "running", "health": "healthy",
                         "restarts": 0}]).save(paths)
    st = json.loads(status("--json"))
    assert st["running"] and st["pid"] == os.getpid() and st["last_checkin"] == "2027-01-15T08:00:00Z"
    assert st["apps"] == [{"name": "webcam", "version": "1.0.0", "state": "running", "health": "healthy",
                           "restarts": 0, "last_error": "exit 1"}]
    human = status()
    assert "dev_0123456789ab (kitchen-pi)" in human and "running (pid" in human
    assert "1 reports" in human and "webcam" in human and "exit 1" in human
