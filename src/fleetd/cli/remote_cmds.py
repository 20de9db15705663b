"""fleetd devices cp, forward and logs --follow: byte streams through a device's remote-access channel
(docs/remote-access.md). Each is a session of its own kind (file_get, file_put, forward, logs), asked for and
opened as a terminal is (shell.py), audited and capped alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from .client import Client
from .common import ApiKeyOpt, CaOpt, ServerOpt, errors_reported, remote
from .devices import ADMIN, DeviceArg
from .output import fail
from .shell import LOST, open_session, request_session, session_target

CHUNK = 64 * 1024
ProgressOpt = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="Show a progress bar on stderr (default: when stderr is a terminal).",
    show_default=False)]


def _grant(client: Client, device: str, kind: str, options: dict[str, Any]) -> tuple[str, str, Any, dict[str, Any]]:
    dev = client.call(ADMIN, "GetDevice", {"id": device})
    grant = request_session(client, dev["id"], kind=kind, options=options)
    url, tls = session_target(client, grant)
    return dev["name"], url, tls, grant


class Progress:
    """A one-line progress bar on stderr: bytes, percent, rate; redrawn at most ten times a second."""

    def __init__(self, total: int, label: str, shown: bool) -> None:
        self.total, self.label, self.shown = total, label, shown
        self.done = 0
        self.started = self.drawn = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.shown and (now - self.drawn >= 0.1 or self.done >= self.total):
            self.drawn = now
            self.draw(now)

    def draw(self, now: float) -> None:
        part = self.done / self.total if self.total else 1.0
        bar = "#" * int(part * 30)
        rate = self.done / max(now - self.started, 1e-6) / (1 << 20)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {part:4.0%} {self.done / (1 << 20):.1f}/"
                         f"{self.total / (1 << 20):.1f} MiB {rate:.1f} MiB/s")
        sys.stderr.flush()

    def end(self) -> None:
        if self.shown:
            self.draw(time.monotonic())
            sys.stderr.write("\n")


def _split(arg: str) -> tuple[str, str] | None:
    """``DEVICE:/ABSOLUTE/PATH`` as (device, path); None for a local path."""
    device, sep, path = arg.partition(":")
    return (device, path) if sep and device and path.startswith("/") and "/" not in device else None


def devices_cp(source: Annotated[str, typer.Argument(help="DEVICE:/PATH on the device, or a local file.")],
               dest: Annotated[str, typer.Argument(help="A local file or directory, or DEVICE:/PATH.")],
               progress: ProgressOpt = None, server: ServerOpt = None, api_key: ApiKeyOpt = None,
               ca: CaOpt = None) -> None:
    """Copy a file from a device (cp DEVICE:/PATH LOCAL) or to one (cp LOCAL DEVICE:/PATH), through its
    remote-access channel; only in the directories the device's agent.conf allows (remote_copy_dirs)."""
    src, dst = _split(source), _split(dest)
    if (src is None) == (dst is None):
        fail("name exactly one side on the device, as DEVICE:/ABSOLUTE/PATH",
             "fleetd devices cp kitchen-pi:/var/log/app.log ./app.log, or fleetd devices cp ./app.conf "
             "kitchen-pi:/etc/myapp/")
    shown = sys.stderr.isatty() if progress is None else progress
    with errors_reported(), remote(server, api_key, ca) as client:
        if src is not None:
            target = Path(dest)
            if target.is_dir():
                target = target / os.path.basename(src[1].rstrip("/"))
            if not target.parent.is_dir():
                fail(f"{target.parent} is not a directory here")
            name, url, tls, grant = _grant(client, src[0], "file_get", {"path": src[1]})
        else:
            assert dst is not None
            local = Path(source)
            if not local.is_file():
                fail(f"{source} is not a file here")
            size = local.stat().st_size
            name, url, tls, grant = _grant(client, dst[0], "file_put",
                                           {"path": dst[1], "size": size, "name": local.name})
    if src is not None:
        n, digest, where = asyncio.run(_get(url, grant["token"], tls, target, shown, f"{name}:{src[1]}"))
    else:
        assert dst is not None
        n, digest, where = asyncio.run(_put(url, grant["token"], tls, local, shown, f"{name}:{dst[1]}"))
    print(f"copied {n} bytes to {where} (sha256 {digest})")


async def _end(ws: Any) -> dict[str, Any]:
    """The session's last word: {"exit": 0} when it did its work."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            if isinstance(message, str):
                return dict(msgspec.json.decode(message))
    except ConnectionClosed as e:
        return {"closed": f"the connection to the server closed: {e}"}
    return {"closed": "the server closed the session"}


async def _get(url: str, token: str, tls: Any, target: Path, shown: bool, label: str) -> tuple[int, str, str]:
    from websockets.exceptions import ConnectionClosed

    ws, opened = await open_session(url, token, tls)
    size = int(opened.get("size") or 0)
    bar = Progress(size, label, shown)
    sha = hashlib.sha256()
    part = target.with_name(f".{target.name}.fleetd-part")
    try:
        with open(part, "wb") as f:
            async with ws:
                end: dict[str, Any] = {"closed": "the server closed the session"}
                try:
                    async for message in ws:
                        if isinstance(message, str):
                            end = dict(msgspec.json.decode(message))
                            break
                        f.write(message)
                        sha.update(message)
                        bar.add(len(message))
                except ConnectionClosed as e:
                    end = {"closed": f"the connection to the server closed: {e}"}
        bar.end()
        if end.get("exit") != 0:
            fail(f"the copy failed: {end.get('closed') or end}", code=LOST)
        if bar.done != size:
            fail(f"the copy failed: {bar.done} of {size} bytes arrived", code=LOST)
        part.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return bar.done, sha.hexdigest(), str(target)


async def _put(url: str, token: str, tls: Any, local: Path, shown: bool, label: str) -> tuple[int, str, str]:
    ws, opened = await open_session(url, token, tls)
    size = int(opened.get("size") or 0)
    bar = Progress(size, label, shown)
    sha = hashlib.sha256()
    async with ws:
        ender = asyncio.ensure_future(_end(ws))  # an early refusal (the device's disk, a limit) ends the sending
        with open(local, "rb") as f:
            while not ender.done() and (chunk := f.read(CHUNK)):
                await ws.send(chunk)
                sha.update(chunk)
                bar.add(len(chunk))
        if not ender.done():
            await ws.send(msgspec.json.encode({"eof": True}).decode())
        end = await ender
    bar.end()
    if end.get("exit") != 0:
        fail(f"the copy failed: {end.get('closed') or end}", code=LOST)
    return bar.done, sha.hexdigest(), f"{label} ({opened.get('path')})"


def devices_forward(device: DeviceArg,
                    spec: Annotated[str, typer.Argument(
                        help="LOCALPORT:HOST:PORT: connections to LOCALPORT here go to HOST:PORT as the device "
                             "reaches it (localhost: the device itself).", show_default=False)],
                    bind: Annotated[str, typer.Option("--bind", help="The local address to listen on.")] = "127.0.0.1",
                    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None) -> None:
    """Forward a local TCP port to HOST:PORT from a device, through its remote-access channel (the device's
    agent.conf must say remote_forward = true); each connection is a session of its own. Runs until ^C."""
    local_port, _, rest = spec.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not (local_port.isdigit() and port.isdigit() and host and 0 < int(port) < 65536
            and 0 <= int(local_port) < 65536):
        fail(f"expected LOCALPORT:HOST:PORT, got {spec!r}", "e.g. fleetd devices forward kitchen-pi 8080:localhost:80")
    with errors_reported(), remote(server, api_key, ca) as client:
        dev = client.call(ADMIN, "GetDevice", {"id": device})
        _check_channel(client, dev)  # fail now, not at the first connection
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_forward(client, dev, bind, int(local_port), host, int(port)))


def _check_channel(client: Client, dev: dict[str, Any]) -> None:
    """Fail when this server cannot open sessions on the device for this user (GET /v1/remote/devices/ID)."""
    r = client.http.get(f"/v1/remote/devices/{dev['id']}")
    if r.status_code != 200 or "json" not in r.headers.get("content-type", ""):
        fail(f"{client.server} has remote access off", "see docs/remote-access.md")
    st = r.json()
    if not st["allowed"]:
        fail("remote sessions need the role remote_role names (admin by default)")
    if not st["channel"]:
        fail(f"device {dev['name']} has no remote-access channel open to {client.server}: its agent has remote "
             "access off, or it is offline")
    if "forward" not in st["kinds"]:
        fail(f"the agent on {dev['name']} is too old to forward ports: update it")


async def _forward(client: Client, dev: dict[str, Any], bind: str, local_port: int, host: str, port: int) -> None:
    options = {"host": host, "port": port}

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            grant = await asyncio.to_thread(request_session, client, dev["id"], kind="forward", options=options)
            url, tls = session_target(client, grant)
            ws, _ = await open_session(url, grant["token"], tls)
        except Exception as e:  # typer.Exit too: one connection's failure (said on stderr) is not the command's
            print(f"fleetd: a forwarded connection failed: {e}", file=sys.stderr)
            writer.close()
            return

        async def up() -> None:
            while data := await reader.read(CHUNK):
                await ws.send(data)
            await ws.send(msgspec.json.encode({"eof": True}).decode())

        sending = asyncio.create_task(up())
        try:
            async for message in ws:
                if isinstance(message, str):
                    ctl = msgspec.json.decode(message)
                    if "closed" in ctl:
                        print(f"fleetd: a forwarded connection ended: {ctl['closed']}", file=sys.stderr)
                    break
                writer.write(message)
                await writer.drain()
        except (ConnectionClosed, ConnectionError):
            pass
        finally:
            sending.cancel()
            await ws.close()
            writer.close()

    srv = await asyncio.start_server(one, bind, local_port)
    where = srv.sockets[0].getsockname()
    print(f"forwarding {where[0]}:{where[1]} to {host}:{port} from {dev['name']}; ^C to stop", flush=True)
    async with srv:
        await srv.serve_forever()


def follow_logs(client: Client, dev: dict[str, Any], app: str, lines: int) -> None:
    """fleetd devices logs --follow: the app's log through the channel as it grows, until ^C."""
    grant = request_session(client, dev["id"], kind="logs", options={"app": app, "lines": lines, "follow": True})
    url, tls = session_target(client, grant)

    async def run() -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        ws, _ = await open_session(url, grant["token"], tls)
        out = sys.stdout.buffer
        async with ws:
            try:
                async for message in ws:
                    if isinstance(message, str):
                        return dict(msgspec.json.decode(message))
                    out.write(message)
                    out.flush()
            except ConnectionClosed as e:
                return {"closed": f"the connection to the server closed: {e}"}
        return {"closed": "the server closed the session"}

    with contextlib.suppress(KeyboardInterrupt):
        end = asyncio.run(run())
        if "closed" in end:
            fail(f"the log follow ended: {end['closed']}", code=LOST)


def devices_replay(session: Annotated[str, typer.Argument(
                       help="The session id (rs_...), as the audit log shows it (fleetd audit --action "
                            "device.remote_session).", show_default=False)],
                   timed: Annotated[bool, typer.Option(
                       "--timed", help="Replay at the pace it was recorded (pauses cut to 2 s) instead of at once.")]
                   = False,
                   server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None) -> None:
    """Replay a recorded terminal session (the server records them with remote_record_terminals on): the exact
    bytes its operator's terminal was sent, to stdout. Needs the admin role; each replay is audited."""
    import httpx

    from ..remote import recording

    with errors_reported(), remote(server, api_key, ca) as client:
        try:
            r = client.http.get(f"/v1/remote/recordings/{session}")
        except httpx.HTTPError as e:
            fail(f"cannot reach {client.server}: {e}")
        if r.status_code in (404, 405) and "application/json" not in r.headers.get("content-type", ""):
            fail(f"{client.server} has remote access off", "see docs/remote-access.md")
        if r.status_code != 200:
            fail(r.json().get("message", r.text) if "json" in r.headers.get("content-type", "") else r.text)
        _, records = recording.parse(r.content)
    out = sys.stdout.buffer
    last = 0.0
    for at, kind, payload in records:
        if kind != recording.OUTPUT:
            continue
        if timed:
            time.sleep(min(max(at - last, 0.0), 2.0))
            last = at
        out.write(payload)
        out.flush()
