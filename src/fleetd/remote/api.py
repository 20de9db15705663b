"""Remote access routes (docs/remote-access.md), mounted only when the server runs with ``remote_access`` on:

- ``POST /v1/remote/sessions``: an operator (a role with the remote permission) asks for a session on a device and
  gets a single-use token bound to it (a browser's cookie needs its CSRF header here, as on every POST);
- ``GET /v1/remote/sessions/{id}`` (WebSocket): the operator's side of that session; the first message is the
  token. A browser's ``Origin`` must be this server's: a page elsewhere is refused before the upgrade;
- ``GET /v1/remote/device`` (WebSocket): a device's channel (frames.py); the first frame is HELLO with its bearer
  token (the device API's challenge/token authentication);
- ``GET /v1/remote/devices/{id}``: whether that device has a channel here and the caller may open sessions (the web
  UI's device page shows its terminal only then);
- ``GET /v1/remote/terminal``: the web UI's terminal page (web/terminal.html), with the only policy that lets
  xterm.js add its style elements and be framed by the device page (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from typing import Any

import msgspec
from litestar import Request, Response, WebSocket, get, post, websocket
from litestar.exceptions import WebSocketDisconnect

from ..core.errors import (
    FailedPrecondition,
    FleetdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from ..core.resources import data_dir
from ..core.tasks import cancel_and_wait
from . import frames, recording
from .frames import Frame
from .hub import Channel, Limits, RemoteHub, Session

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
PING_SECONDS = 20.0
DEVICE_CHECK_SECONDS = 2.0  # how often an open channel checks that its device may still call
# WebSocket close codes: 4000 + the HTTP status the error would have had.
CLOSE_CODES = {"unauthenticated": 4401, "permission_denied": 4403, "not_found": 4404, "failed_precondition": 4412,
               "resource_exhausted": 4429, "invalid_argument": 4400}
JSON = "application/json"
# The terminal page's policy: the web UI's (http/security_headers.py) but for 'unsafe-inline' styles (xterm.js adds
# <style> elements for its theme and cell sizes) and framing by this origin's own pages (the device page).
TERMINAL_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
TERMINAL_HEADERS = {"Content-Security-Policy": TERMINAL_CSP, "X-Frame-Options": "SAMEORIGIN",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class SessionRequest(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str
    kind: str = "terminal"
    cols: int = 80
    rows: int = 24
    command: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # the kind's: check_options in hub.py


def hub_of(app: Any) -> RemoteHub:
    hub: RemoteHub = app.state.remote
    return hub


def make_hub(fleet: Any) -> RemoteHub:
    s = fleet.settings
    hub = RemoteHub(fleet.store, fleet.keys.token_key,
                    Limits(s.remote_sessions_per_device, s.remote_sessions_total, s.remote_idle_seconds, s.remote_role,
                           s.remote_copy_max_mib << 20,
                           fleet.data_dir / "recordings" if s.remote_record_terminals else None))
    fleet.metrics.gauge("fleetd_remote_channels", "Devices with a remote-access channel open to this process.",
                        lambda: len(hub.channels))
    fleet.metrics.gauge("fleetd_remote_sessions", "Remote sessions open on this process's channels.",
                        hub.session_count)
    return hub


@post("/v1/remote/sessions", opt={"auth": "viewer"}, include_in_schema=False, status_code=200)
async def create_session(request: Request[Any, Any, Any]) -> Response[bytes]:
    try:
        req = msgspec.json.decode(await request.body(), type=SessionRequest)
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"the session request is not valid: {e}; send "
                              '{"device_id": ID, "kind": "terminal", "cols": 80, "rows": 24}') from None
    principal = request.state.principal
    addr = request.client.host if request.client else None
    hub = hub_of(request.app)
    try:
        g, token = hub.grant(principal, addr, req.device_id, req.kind, req.cols, req.rows, req.command, req.options)
    except (PermissionDenied, FailedPrecondition) as e:
        await hub.denied(principal.actor(addr), req.device_id, req.kind, req.command, e.message)
        raise
    body = {"session_id": g.s, "token": token, "path": f"/v1/remote/sessions/{g.s}",
            "expires_in": g.x - int(time.time())}
    return Response(msgspec.json.encode(body), media_type=JSON)


@get("/v1/remote/devices/{device_id:str}", opt={"auth": "viewer"}, include_in_schema=False)
async def device_status(request: Request[Any, Any, Any], device_id: str) -> Response[bytes]:
    hub = hub_of(request.app)
    channel = hub.channels.get(device_id)
    try:
        hub.check_allowed(request.state.principal)
        allowed = True
    except PermissionDenied:
        allowed = False
    body = {"device_id": device_id, "channel": channel is not None and not channel.closed, "allowed": allowed,
            "kinds": channel.info.get("kinds", []) if channel is not None else []}
    return Response(msgspec.json.encode(body), media_type=JSON)


@get("/v1/remote/recordings/{session_id:str}", opt={"auth": "viewer"}, include_in_schema=False)
async def get_recording(request: Request[Any, Any, Any], session_id: str) -> Response[bytes]:
    """A terminal session's recording (recording.py), for an admin; each replay is audited."""
    principal = request.state.principal
    if principal.kind == "device" or not principal.has_role("admin"):
        raise PermissionDenied("replaying a session recording needs the admin role")
    fleet = request.app.state.fleet
    path = recording.path_of(fleet.data_dir / "recordings", session_id)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise NotFound(f"this server has no recording of session {session_id}: the session was not recorded "
                       "(remote_record_terminals was off), it expired (remote_recording_days; its audit entry "
                       "says recording_expired), or another replica held it") from None
    meta, _ = recording.parse(data)
    hub = hub_of(request.app)
    await hub.write_audit(principal.actor(request.client.host if request.client else None), "device.remote_replay",
                           str(meta.get("device")), "ok", session=session_id)
    return Response(data, media_type="application/octet-stream")


@get("/v1/remote/terminal", opt={"auth": "public"}, include_in_schema=False)
async def terminal_page() -> Response[bytes]:
    return Response((data_dir("web") / "terminal.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers=TERMINAL_HEADERS)


def _same_origin(origin: str, socket: WebSocket[Any, Any, Any], public_url: str) -> bool:
    netloc = urllib.parse.urlsplit(origin).netloc.lower()
    return bool(netloc) and netloc in {socket.headers.get("host", "").lower(),
                                       urllib.parse.urlsplit(public_url).netloc.lower()}


async def _refuse(socket: WebSocket[Any, Any, Any], e: FleetdError) -> None:
    with contextlib.suppress(Exception):
        await socket.send_text(msgspec.json.encode({"error": e.message, "code": e.code}).decode())
        await socket.close(CLOSE_CODES.get(e.code, 4500), e.message[:120])


@websocket("/v1/remote/sessions/{session_id:str}", opt={"auth": "public"})
async def operator_session(socket: WebSocket[Any, Any, Any], session_id: str) -> None:
    hub = hub_of(socket.app)
    origin = socket.headers.get("origin")
    if origin is not None and not _same_origin(origin, socket, socket.app.state.fleet.public_url):
        log.warning("refused a remote session WebSocket from origin %s", origin)
        await socket.close(4403, "cross-origin WebSocket refused")  # before accept: the browser sees HTTP 403
        return
    await socket.accept()
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            first = await socket.receive_data("text")
        token = msgspec.json.decode(first).get("token", "") if first.startswith("{") else ""
        if not token:
            raise Unauthenticated('send the session token first: {"token": "frs...."}')
        g = hub.redeem(token)
        if g.s != session_id:
            raise PermissionDenied(f"this token is for session {g.s}, not {session_id}")
        s = await hub.open(g)
    except TimeoutError:
        await _refuse(socket, Unauthenticated(f"no session token within {HELLO_TIMEOUT:g} s"))
        return
    except (WebSocketDisconnect, msgspec.DecodeError, AttributeError):
        return
    except FleetdError as e:
        await _refuse(socket, e)
        return
    await _run_session(socket, hub, s)


async def _run_session(socket: WebSocket[Any, Any, Any], hub: RemoteHub, s: Session) -> None:
    how, status = "the operator left", None

    async def from_operator() -> None:
        while True:
            msg: dict[str, Any] = dict(await socket.receive())
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes"):
                try:
                    await s.send_input(msg["bytes"])
                except ResourceExhausted as e:
                    await hub.close(s, e.message)
                    return
            elif msg.get("text"):
                try:
                    ctl = msgspec.json.decode(msg["text"])
                    if ctl.get("eof") is True:
                        await s.send_eof()
                        continue
                    cols, rows = ctl["resize"]
                    await s.resize(int(cols), int(rows))
                except (msgspec.DecodeError, LookupError, TypeError, ValueError, InvalidArgument) as e:
                    log.info("remote session %s: ignored a control message %r: %s", s.grant.s, msg["text"][:100], e)

    async def idle_watch() -> None:
        limit = hub.limits.idle_seconds
        while True:
            left = s.last_activity + limit - time.monotonic()
            if left <= 0:
                await hub.close(s, f"idle for {limit:g} s (remote_idle_seconds)")
                return
            await asyncio.sleep(left)

    reader = asyncio.create_task(from_operator())
    watch = asyncio.create_task(idle_watch())
    try:
        opened = {"user": None, "pid": None, **s.info, "opened": s.grant.s, "device": s.grant.d}
        await socket.send_text(msgspec.json.encode(opened).decode())
        while True:
            getter = asyncio.ensure_future(s.events.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                await hub.close(s, "the operator left")
                break
            event, value = getter.result()
            if event == "data":
                if s.over_limit():
                    await hub.close(s, f"the device sent more than {s.max_bytes} bytes (remote_copy_max_mib)")
                    continue
                if s.recorder is not None:
                    s.recorder.record(recording.OUTPUT, value)
                await socket.send_bytes(value)
                await s.delivered(len(value))
            elif event == "exit":
                how, status = "exit", value
                await socket.send_text(msgspec.json.encode({"exit": value}).decode())
                await socket.close(1000, f"exit {value}")
                break
            elif event == "closed":
                how = value
                await socket.send_text(msgspec.json.encode({"closed": value}).decode())
                await socket.close(4410 if "idle" not in value else 4408, value[:120])
                break
    except (WebSocketDisconnect, OSError, RuntimeError) as e:  # the operator's socket went away mid-send
        log.debug("remote session %s: operator socket closed: %s", s.grant.s, e)
        await hub.close(s, "the operator left")
    finally:
        await cancel_and_wait(reader)
        await cancel_and_wait(watch)
        await hub.finished(s, how, status)


@websocket("/v1/remote/device", opt={"auth": "public"})
async def device_channel(socket: WebSocket[Any, Any, Any]) -> None:
    hub = hub_of(socket.app)
    fleet = socket.app.state.fleet
    await socket.accept()
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            sid, frame, payload = frames.unpack(await socket.receive_data("binary"))
        if sid != 0 or frame is not Frame.HELLO:
            raise InvalidArgument("the first frame of a channel is HELLO")
        hello = frames.json_payload(payload, "HELLO")
        principal = fleet.hub.tokens.verify(str(hello.get("token", "")))
        if principal is None:
            raise Unauthenticated("the device token is invalid or expired; authenticate again")
    except TimeoutError:
        await _refuse(socket, Unauthenticated(f"no HELLO within {HELLO_TIMEOUT:g} s"))
        return
    except WebSocketDisconnect:
        return
    except FleetdError as e:
        await _refuse(socket, e)
        return

    async def send(message: bytes) -> None:
        await socket.send_bytes(message)

    async def close(reason: str) -> None:
        with contextlib.suppress(Exception):
            await socket.close(4409, reason[:120])

    channel = Channel(principal.id, send, close, hello)
    await hub.attach(channel)
    await channel.send(frames.pack_json(0, Frame.READY, {"idle_seconds": hub.limits.idle_seconds,
                                                         "ping_seconds": PING_SECONDS}))
    log.info("remote access channel open: device %s (agent %s)", principal.id, hello.get("version", "?"))
    reason = "the device's channel closed: the agent stopped or lost its connection"
    devices = fleet.hub.tokens.devices
    rt = devices.get(principal.id)
    epoch = rt.epoch if rt is not None else None

    async def still_allowed() -> None:
        """Revoking, deleting or re-keying the device ends its channel (and its sessions) within a check."""
        nonlocal reason
        while (rt := devices.get(principal.id)) is not None and rt.epoch == epoch:
            await asyncio.sleep(DEVICE_CHECK_SECONDS)
        reason = "the device was revoked, deleted or re-keyed"
        hub.detach(channel, reason)
        await close(reason)

    watch = asyncio.create_task(still_allowed())
    try:
        while True:
            message = await socket.receive_data("binary")
            try:
                channel.dispatch(message)
            except FleetdError as e:
                log.warning("device %s: bad channel frame: %s", principal.id, e.message)
    except WebSocketDisconnect:
        pass
    finally:
        await cancel_and_wait(watch)
        hub.detach(channel, reason)
        log.info("remote access channel closed: device %s (%s)", principal.id, reason)


ROUTES = [create_session, operator_session, device_channel, device_status, terminal_page, get_recording]
