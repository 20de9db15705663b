"""``GET /agent/...``: the device agent's zipapp, its launcher and its install script.

Public (no credentials): a device that is about to install the agent has none
yet, and these files hold no secret. The install one-liner fetches the script
with curl pinned to the server's TLS key, and the script fetches the other two
the same way (see ``api/enrollment.install_command`` and ``agent/install.sh``).

Where the files come from: ``resources.agent_file`` (bundled in a wheel or
the binary; built into ``dist/`` by ``make agent`` in a source checkout). They
are small (well under a MiB), so each is read once into memory with its
SHA-256, on a worker thread, and read again only when the file changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get

from ..core.errors import NotFound
from ..core.resources import agent_file
from . import ranges

ZIPAPP = "fleet-agent.pyz"
LAUNCHER = "fleet-agent-launcher.py"
INSTALL_SCRIPT = "install.sh"
MEDIA_TYPES = {
    ZIPAPP: "application/octet-stream",
    LAUNCHER: "text/x-python; charset=utf-8",
    INSTALL_SCRIPT: "text/x-shellscript; charset=utf-8",
}
# The files change when the server is upgraded: clients may keep them but must revalidate (ETag).
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class AgentFile:
    name: str
    body: bytes
    sha256: str
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns) of the file it was read from

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


_cache: dict[str, AgentFile] = {}
_lock = threading.Lock()


def load(name: str) -> AgentFile:
    """The file's bytes and SHA-256, from the cache unless the file changed; blocking (call on a thread)."""
    path = agent_file(name)
    if path is None:
        raise NotFound(f"{name} is not on this server: it ships inside the fleetd binary and wheel; "
                       "in a source checkout build it with 'make agent'")
    st = os.stat(path)
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        cached = _cache.get(name)
    if cached is not None and cached.stamp == stamp:
        return cached
    body = path.read_bytes()
    loaded = AgentFile(name=name, body=body, sha256=hashlib.sha256(body).hexdigest(), stamp=stamp)
    with _lock:
        _cache[name] = loaded
    return loaded


async def _serve(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    f = await asyncio.to_thread(load, name)
    headers = {"ETag": f.etag, "Cache-Control": CACHE_CONTROL}
    if ranges.if_none_match(request.headers.get("if-none-match"), f.etag):
        return Response(b"", status_code=304, headers=headers)
    return Response(f.body, headers=headers, media_type=MEDIA_TYPES[name])


@get(f"/agent/{ZIPAPP}", opt={"auth": "public"}, include_in_schema=False, name="agent.zipapp")
async def agent_zipapp(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _serve(request, ZIPAPP)


@get(f"/agent/{LAUNCHER}", opt={"auth": "public"}, include_in_schema=False, name="agent.launcher")
async def agent_launcher(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _serve(request, LAUNCHER)


@get(f"/agent/{INSTALL_SCRIPT}", opt={"auth": "public"}, include_in_schema=False, name="agent.install_script")
async def agent_install_script(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _serve(request, INSTALL_SCRIPT)


ROUTES = [agent_zipapp, agent_launcher, agent_install_script]

_RESPONSES: dict[str, Any] = {
    "304": {"description": "Not modified (If-None-Match matched the ETag)"},
    "404": {"description": "not_found: this server has no such file (a source checkout without 'make agent')"},
}
OPENAPI_PATHS: dict[str, Any] = {
    f"/agent/{ZIPAPP}": {"get": {
        "summary": "The device agent as a Python zipapp (no auth; ETag = its SHA-256)",
        "responses": {"200": {"description": "the zipapp", "content": {MEDIA_TYPES[ZIPAPP]: {}}}, **_RESPONSES},
        "x-fleetd-auth": "public"}},
    f"/agent/{LAUNCHER}": {"get": {
        "summary": "The agent's launcher, which the systemd unit runs (no auth)",
        "responses": {"200": {"description": "a Python script"}, **_RESPONSES}, "x-fleetd-auth": "public"}},
    f"/agent/{INSTALL_SCRIPT}": {"get": {
        "summary": "The agent's install script, for the one-liner of EnrollmentService.CreateToken (no auth)",
        "responses": {"200": {"description": "a POSIX shell script"}, **_RESPONSES},
        "x-fleetd-auth": "public"}},
}

__all__ = ["LAUNCHER", "OPENAPI_PATHS", "ROUTES", "ZIPAPP", "AgentFile", "load"]
