"""Helpers for the executor tests: signed artifacts, a blob server with Range support, test apps.

Artifacts are signed by fleetd's own manifest code (tests may import fleetd;
the agent may not). The blob server answers like ``GET /v1/blobs/<sha256>``
(docs/protocol.md §12) through ``httpx.MockTransport``, so the agent's real
download code runs against it.

Run as a module it is a stand-in agent process, for the tests that kill the
agent mid-install and for the launcher's trial runs:

    python -m tests.agent.apps_support install STATE_DIR     (action in STATE_DIR/action.json)
    python -m tests.agent.apps_support agent STATE_DIR BEHAVIOUR
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_agent.apps import Executor
from fleet_agent.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
DEVICE_TYPE = "test-dev"
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"agent apps tests").digest())
PUBLIC_KEY = SIGNING_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
BASE_URL = "https://fleet.test:8420"


# --- artifacts and actions --------------------------------------------------------------

def make_artifact(data: bytes, *, name: str = "app", version: str = "1.0.0", file_name: str | None = None,
                  install: dict[str, Any] | None = None, kind: str = "app",
                  device_types: tuple[str, ...] = (DEVICE_TYPE,), module: str = "",
                  meta: dict[str, str] | None = None) -> dict[str, Any]:
    """The artifact reference of an install action, signed with SIGNING_KEY by fleetd's code."""
    import msgspec

    from fleetd.artifacts.catalog import InstallSpec, build_manifest, sign

    sha = hashlib.sha256(data).hexdigest()
    file_name = file_name or f"{name}-{version}.sh"
    spec = msgspec.convert(install, InstallSpec) if install is not None else None
    manifest = build_manifest(name=name, version=version, kind=kind, sha256=sha, size=len(data),
                              file_name=file_name, device_types=list(device_types), install_spec=spec,
                              created=1795482648, module=module, meta=meta)
    return {"name": name, "version": version, "kind": kind, "url": f"https://fleet.example.net:8420/v1/blobs/{sha}",
            "sha256": sha, "size": len(data), "file_name": file_name, "manifest": manifest.decode(),
            "signature": sign(SIGNING_KEY, manifest), "offline_signatures": []}


_ids = iter(range(1, 1 << 30))


def make_action(artifact: dict[str, Any] | None, kind: str = "install", component: str | None = None,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": f"act_{next(_ids):012x}", "kind": kind,
            "component": component if component is not None else (artifact or {}).get("name", ""),
            "state": "queued", "rollback": kind == "rollback", "artifact": artifact, "params": params or {}}


class Reports:
    """A report callback that remembers every report."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int]] = []
        self.result: dict[str, Any] | None = None  # what the final report brought back, if anything

    def __call__(self, state: str, message: str, progress: int, result: dict[str, Any] | None = None) -> None:
        self.items.append((state, message, progress))
        if result is not None:
            self.result = result

    @property
    def states(self) -> list[str]:
        return [s for s, _, _ in self.items]

    @property
    def final(self) -> tuple[str, str, int]:
        return self.items[-1]


# --- the blob server ----------------------------------------------------------------------

class _Cut(httpx.SyncByteStream):
    """A body that breaks off after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit = data, limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for i in range(0, len(self.data), 1000):
            chunk = self.data[i:i + 1000][: max(self.limit - sent, 0)]
            if chunk:
                yield chunk
                sent += len(chunk)
            if sent >= self.limit:
                raise httpx.ReadError("connection reset by peer (test)")


class BlobServer:
    """``GET /v1/blobs/<sha256>`` with Range and If-Range as fleetd answers it."""

    def __init__(self, blobs: dict[str, bytes] | None = None, blob_dir: Path | None = None) -> None:
        self.blobs = dict(blobs or {})
        self.blob_dir = blob_dir
        self.requests: list[httpx.Request] = []
        # Break the next response bodies off after these many bytes (one entry per response).
        self.cuts: list[int] = []
        self.extra = b""  # appended to every body: a server sending more than the manifest says
        # Answer the next requests with these statuses instead (one entry per request).
        self.statuses: list[int] = []
        self.honour_range = True

    def add(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def _blob(self, sha: str) -> bytes | None:
        if sha in self.blobs:
            return self.blobs[sha]
        if self.blob_dir is not None and (self.blob_dir / sha).is_file():
            return (self.blob_dir / sha).read_bytes()
        return None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != "Bearer test-token":
            return httpx.Response(401, json={"code": "unauthenticated", "message": "no token"})
        if self.statuses:
            status = self.statuses.pop(0)
            code = {401: "unauthenticated", 403: "permission_denied", 503: "unavailable"}.get(status, "internal")
            return httpx.Response(status, json={"code": code, "message": f"you may not download this blob ({status})"})
        sha = request.url.path.rsplit("/", 1)[-1]
        data = self._blob(sha)
        if data is None:
            return httpx.Response(404, json={"code": "not_found", "message": f"no blob {sha}"})
        etag = f'"{sha}"'
        status, start = 200, 0
        rng = request.headers.get("range", "")
        if self.honour_range and rng.startswith("bytes=") and rng.endswith("-") \
                and request.headers.get("if-range", etag) == etag:
            start = int(rng[6:-1])
            if start >= len(data):
                return httpx.Response(416, headers={"content-range": f"bytes */{len(data)}"},
                                      json={"code": "out_of_range", "message": "outside the blob"})
            status = 206
        body = data[start:] + self.extra
        headers = {"etag": etag, "accept-ranges": "bytes"}
        if status == 206:
            headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if self.cuts:
            return httpx.Response(status, headers=headers, stream=_Cut(body, self.cuts.pop(0)))
        return httpx.Response(status, headers=headers, content=body)


class FakeClient:
    """The two things the executor uses of A1's ServerClient: ``http`` and ``auth_headers()``."""

    base_url = BASE_URL

    def __init__(self, server: BlobServer) -> None:
        self.server = server
        self.http = httpx.Client(transport=httpx.MockTransport(server.handler))
        self.token_resets = 0

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer test-token"}

    def forget_token(self) -> None:
        self.token_resets += 1


# --- test apps ------------------------------------------------------------------------------

def heartbeat_app(version: str) -> bytes:
    """A shell app that writes the time to ./heartbeat every 0.2 s."""
    return (f"#!/bin/sh\n# heartbeat app {version}\n"
            "while :; do date +%s.%N > heartbeat.tmp && mv heartbeat.tmp heartbeat; sleep 0.2; done\n").encode()


def crashing_app(version: str, code: int = 3) -> bytes:
    return f"#!/bin/sh\n# crashing app {version}\necho 'cannot start: no camera' >&2\nexit {code}\n".encode()


def read_heartbeat(folder: Path) -> float:
    try:
        return float((folder / "heartbeat").read_text())
    except (OSError, ValueError):
        return 0.0


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def heartbeat_advances(folder: Path, timeout: float = 5.0) -> bool:
    first = wait_until(lambda: read_heartbeat(folder), timeout, f"a heartbeat in {folder}")
    wait_until(lambda: read_heartbeat(folder) > first, timeout, f"the heartbeat in {folder} to advance")
    return True


def zipapp_bytes(main_py: str) -> bytes:
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__main__.py", main_py)
    return buf.getvalue()


def fake_agent_source(behaviour: str) -> str:
    """A stand-in for the agent zipapp: runs `python -m tests.agent.apps_support agent ...`."""
    return (f"import os, sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from tests.agent.apps_support import main\n"
            f"sys.exit(main(['agent', sys.argv[sys.argv.index('--state-dir') + 1], {behaviour!r}]))\n")


class Device:
    """A state dir, a blob server and an Executor over them (the built-in supervisor, short health windows)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = BlobServer()
        self.client = FakeClient(self.server)
        self.ex = self.executor()

    def executor(self) -> Executor:
        ex = Executor(self.root, self.client, PUBLIC_KEY, DEVICE_TYPE, supervisor=Supervisor())
        ex.default_grace = 1.0
        ex.restart_check = 0.5
        ex.reboot_delay = 0
        ex.probe_attempts = 1
        return ex

    def artifact(self, data: bytes, version: str, **kw: Any) -> dict[str, Any]:
        self.server.add(data)
        return make_artifact(data, version=version, **kw)

    def run(self, action: dict[str, Any]) -> Reports:
        r = Reports()
        self.ex.execute(action, r)
        assert r.final[0] in ("succeeded", "failed", "rolled_back"), r.items
        return r

    def install(self, data: bytes, version: str, install: dict[str, Any] | None = None, **kw: Any) -> Reports:
        return self.run(make_action(self.artifact(data, version, install=install, **kw)))

    def app(self, name: str = "app") -> Path:
        return self.root / "apps" / name

    def state(self, name: str = "app") -> dict[str, Any]:
        return json.loads((self.app(name) / "state.json").read_text())

    def current(self, name: str = "app") -> str:
        return os.readlink(self.app(name) / "current")

    def pid(self, name: str = "app") -> int:
        pid = self.ex.sup.status(name).pid
        assert pid
        return pid


# --- a stand-in agent process ---------------------------------------------------------------

def _executor(state_dir: Path) -> Any:
    client = FakeClient(BlobServer(blob_dir=state_dir / "blobs"))
    ex = Executor(state_dir, client, PUBLIC_KEY, DEVICE_TYPE, supervisor=Supervisor())
    ex.default_grace = 1.0
    ex.reboot_delay = 0
    return ex


def _file_reporter(path: Path) -> Callable[[str, str, int], None]:
    def report(state: str, message: str, progress: int) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"state": state, "message": message, "progress": progress}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return report


def read_reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    command, state_dir = argv[0], Path(argv[1])
    if command == "install":
        ex = _executor(state_dir)
        ex.start()
        action = json.loads((state_dir / "action.json").read_text())
        ex.execute(action, _file_reporter(state_dir / "reports.jsonl"))
        ex.stop()
        return 0
    if command == "agent":
        behaviour = argv[2]
        with open(state_dir / "runs.jsonl", "a") as f:
            f.write(json.dumps({"argv0": sys.argv[0], "trial": os.environ.get("FLEET_AGENT_TRIAL"),
                                "launched": os.environ.get("FLEET_AGENT_LAUNCHER"), "behaviour": behaviour}) + "\n")
        if behaviour == "crash":
            return 1
        if behaviour == "hang":
            time.sleep(3600)
            return 0
        from fleet_agent import selfupdate

        selfupdate.confirm(state_dir)  # as after the first successful check-in
        action_file = state_dir / "action.json"
        reports = state_dir / "reports.jsonl"
        done = any(r["state"] in ("succeeded", "failed", "rolled_back") for r in read_reports(reports))
        if action_file.exists() and not done:
            _executor(state_dir).execute(json.loads(action_file.read_text()), _file_reporter(reports))
        return 0
    raise SystemExit(f"unknown command {command!r}")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
