"""The binary codec benchmark: an admin List call in binary protobuf against the same call in JSON, interleaved.

Issue 17: a client generated from the published .proto files may speak binary protobuf
(``application/proto``) where the web UI and the CLI speak JSON. Both go through the same
handler; what differs is the codec (fleetd.http.proto_codec against msgspec's JSON encoder).
The call is DeviceAdminService/ListDevices of ``DEVICES`` devices, each with tags, an agent's
inventory (a google.protobuf.Struct), two components and timestamps: the heaviest answer an
admin tool asks for often. fleetd serves it from its own small data dir: the devices are enrolled
offline with fleetd's own code, then check in once over HTTP, so the listing is what a live fleet's is.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from fleetd.accounts import users
from fleetd.accounts.audit import SYSTEM
from fleetd.accounts.users_api import ListUsersResponse
from fleetd.core import pki
from fleetd.devices import join_tokens, registry
from fleetd.devices.admin_api import ListDevicesRequest, ListDevicesResponse
from fleetd.devices.devauth import DeviceTokens
from fleetd.fleet import open_offline
from fleetd.http import proto_codec, rpc
from fleetd.store.database import transaction

from ..e2e.server import run_cli
from . import seed
from .cases import Config, Result, Target, log, median, medians
from .loadgen import WrkRun, check_clean, run_wrk
from .servers import Service, start_fleetd

USERS = DEVICES = 100
# Guards against going back toward the JSON-mapping codec (0.33 and 0.20 before the direct converters), not
# promises of parity: measured 0.78-0.86 and 0.55-0.61 (docs/performance.md, "Binary codec").
TARGET_USERS, TARGET_DEVICES = 0.7, 0.4
CONNECTIONS = 8
CHECKIN = "/fleetd.v1.DeviceService/CheckIn"
CODECS = {"json": "application/json", "proto": "application/proto"}


@dataclass(frozen=True)
class Call:
    method: str  # Service/Method
    request: msgspec.Struct
    response: type[msgspec.Struct]
    items: str  # the response's list field
    count: int
    target: float  # binary requests/s at least this share of JSON's

    @property
    def path(self) -> str:
        return f"/fleetd.v1.{self.method}"

    def body(self, codec: str) -> bytes:
        return proto_codec.encode(self.request) if codec == "proto" else msgspec.json.encode(self.request)

    def post(self, c: httpx.Client, fleetd: Service, key: str, codec: str) -> tuple[msgspec.Struct, int]:
        """The answer in ``codec``, decoded, and its size."""
        r = c.post(fleetd.url + self.path, content=self.body(codec),
                   headers={"Authorization": f"Bearer {key}", "Content-Type": CODECS[codec]}).raise_for_status()
        if r.headers["content-type"] != CODECS[codec]:
            raise RuntimeError(f"proto: {self.method} in {CODECS[codec]} was answered in {r.headers['content-type']}")
        if codec == "proto":
            return proto_codec.decode(r.content, self.response), len(r.content)
        return msgspec.json.decode(r.content, type=self.response), len(r.content)


CALLS = (
    Call("UserService/ListUsers", rpc.Empty(), ListUsersResponse, "users", USERS, TARGET_USERS),
    Call("DeviceAdminService/ListDevices", ListDevicesRequest(limit=DEVICES), ListDevicesResponse, "devices",
         DEVICES, TARGET_DEVICES),
)


def make_data_dir(data: Path) -> tuple[str, list[tuple[str, str]]]:
    """A fresh data dir with ``USERS`` users and ``DEVICES`` active devices (tagged by their join token): an
    admin API key and (hardware id, device token) of each device."""
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    pki.load_or_create(data, ["127.0.0.1"])  # what `serve --host 127.0.0.1` would make
    password = users.hash_password("bench-password-not-used")  # hashed once: scrypt takes ~0.1 s
    conn = open_offline(data)
    try:
        with transaction(conn):
            for i in range(USERS):
                name = f"operator-{i:03d}"
                users.create_user(conn, SYSTEM, name, users.HashedPassword(name, password),
                                  ("admin", "operator", "viewer")[i % 3], must_change_password=i % 7 == 0)
            token, _ = join_tokens.create_token(conn, SYSTEM, description="proto benchmark",
                                                tags={"site": "lab-1", "ring": "beta"})
            enrolled = [registry.enroll(conn, hardware_id=seed.hardware_id(i), device_type=seed.DEVICE_TYPE,
                                        public_key=os.urandom(32), name=f"sensor-{i:03d}", token=lambda: token,
                                        inventory={"hostname": seed.hardware_id(i)}, addr="127.0.0.1")
                        for i in range(DEVICES)]
    finally:
        conn.close()
    tokens = DeviceTokens((data / "token.key").read_bytes())
    key = msgspec.json.decode(run_cli("keys", "create", "--data-dir", str(data), "--name", "bench", "--role",
                                      "admin", "--json").stdout)["key"]
    return key, [(e.device.hardware_id, tokens.issue(e.device.id, e.epoch)) for e in enrolled]


def check_in(fleetd: Service, devices: list[tuple[str, str]], key: str, timeout: float = 30) -> None:
    """One check-in of each device (inventory and components), then wait until the listing shows them all."""
    with httpx.Client(verify=False, timeout=10) as c:
        for i, (hw, token) in enumerate(devices):
            c.post(fleetd.url + CHECKIN, content=seed.checkin_body(hw, i),
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                   ).raise_for_status()
        deadline = time.monotonic() + timeout
        while True:
            listing, _ = CALLS[1].post(c, fleetd, key, "json")
            assert isinstance(listing, ListDevicesResponse)
            if sum(1 for d in listing.devices if d.components) == len(devices):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"proto: the check-ins' components were not in the listing within {timeout:g} s")
            time.sleep(0.2)


def bench(cfg: Config, workdir: Path, logs: Path) -> Result:
    data = workdir / "proto-data"
    key, devices = make_data_dir(data)
    fleetd = start_fleetd(data, logs, "fleetd-proto")
    # Both calls in both codecs in each of the runs; each wrk run half the suite's length.
    seconds = max(1.0, cfg.seconds / 2)
    runs: dict[tuple[str, str], list[WrkRun]] = {}
    sizes: dict[tuple[str, str], int] = {}
    try:
        check_in(fleetd, devices, key)
        requests = {}
        with httpx.Client(verify=False, timeout=10) as c:
            for call in CALLS:
                answers = {}
                for codec in CODECS:
                    answers[codec], sizes[call.method, codec] = call.post(c, fleetd, key, codec)
                    requests[call.method, codec] = seed.write_requests(
                        workdir / f"proto-{call.method.replace('/', '.')}-{codec}.requests", [key],
                        [call.body(codec)])
                if answers["proto"] != answers["json"] or len(getattr(answers["json"], call.items)) < call.count:
                    raise RuntimeError(f"proto: {call.method} answers differently in binary and JSON")

        def wrk(call: Call, codec: str, seconds: float) -> WrkRun:
            return run_wrk(fleetd.url + call.path, seconds=seconds, threads=cfg.threads, connections=CONNECTIONS,
                           server_pid=fleetd.pid, requests_file=requests[call.method, codec],
                           content_type=CODECS[codec])

        log(f"proto: {cfg.warmup:g} s warm-up of each call and codec")
        for call in CALLS:
            for codec in CODECS:
                wrk(call, codec, cfg.warmup)
        for i in range(cfg.runs):
            for call in CALLS:
                for codec in CODECS:
                    run = wrk(call, codec, seconds)
                    check_clean(run, f"{call.method} in {CODECS[codec]}")
                    runs.setdefault((call.method, codec), []).append(run)
                log(f"proto run {i + 1}/{cfg.runs} {call.method}: JSON {runs[call.method, 'json'][-1].rps:,.0f}/s, "
                    f"binary {runs[call.method, 'proto'][-1].rps:,.0f}/s")
    finally:
        fleetd.stop()
        shutil.rmtree(data, ignore_errors=True)
    r = Result("proto", f"the same call in JSON (application/json), interleaved; wrk -c{CONNECTIONS}")
    r.data = {"connections": CONNECTIONS, "seconds": seconds}
    for call in CALLS:
        m = {codec: medians(runs[call.method, codec]) for codec in CODECS}
        # Each run's binary rate against the JSON rate measured right before it: load from elsewhere on the
        # machine moves both, not the ratio. The server's CPU time per answer is the steadiest view of the cost.
        ratio = median([p.rps / j.rps for p, j in zip(runs[call.method, "proto"], runs[call.method, "json"],
                                                     strict=True)])
        cpu = {codec: median([10 * r.server_cpu_pct / r.rps for r in runs[call.method, codec]]) for codec in CODECS}
        size = {codec: sizes[call.method, codec] for codec in CODECS}
        name = call.method.split("/")[1]
        r.rows += [
            (f"{name} of {call.count} {call.items} in binary protobuf, requests/s", f"{m['proto']['rps']:,.0f}",
             f"{m['json']['rps']:,.0f}", f"{ratio:.2f}"),
            ("  p50 / p99, ms", f"{m['proto']['p50_ms']:.1f} / {m['proto']['p99_ms']:.1f}",
             f"{m['json']['p50_ms']:.1f} / {m['json']['p99_ms']:.1f}", "-"),
            ("  server CPU per answer, ms", f"{cpu['proto']:.2f}", f"{cpu['json']:.2f}",
             f"{cpu['proto'] / cpu['json']:.2f}"),
            ("  response body, bytes", f"{size['proto']:,}", f"{size['json']:,}",
             f"{size['proto'] / size['json']:.2f}"),
        ]
        r.targets.append(Target(f"binary protobuf vs JSON, {name} of {call.count} {call.items}, requests/s", ratio,
                                ">=", call.target))
        r.data[name] = {"count": call.count, "ratio": round(ratio, 3), "body_bytes": size,
                        "server_cpu_ms_per_answer": {k: round(v, 3) for k, v in cpu.items()}, **m}
    return r
