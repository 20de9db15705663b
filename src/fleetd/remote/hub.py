"""Channels and sessions (docs/remote-access.md): which devices hold a channel to this server process, the
sessions on each, the single-use session grants operators redeem, the caps, the idle timeout and the audit.

No HTTP here: api.py hands each channel's WebSocket in as a ``send`` and a ``close`` function. State is this
process's own; with several replicas a session reaches only the replica that holds the device's channel.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..accounts.users import Principal
from ..core.clock import new_id
from ..core.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from . import frames
from .frames import CREDIT, EXIT, RESIZE, WINDOW_BYTES, Frame, Kind
from .recording import RESIZE as RECORDED_RESIZE
from .recording import Recorder

log = logging.getLogger(__name__)

TOKEN_PREFIX = "frs."
GRANT_TTL = 30  # seconds to redeem a session grant
OPEN_TIMEOUT = 10.0  # seconds the agent has to answer OPEN
MAX_COMMAND = 4096


class Grant(msgspec.Struct):
    """What a session token carries: one session, on one device, for one principal (fields kept short)."""

    s: str           # the session's id (rs_...), also its audit target's detail
    d: str           # device id
    k: str           # kind
    pk: str          # principal kind, id, name, and the address it asked from
    pi: str | None
    pn: str | None
    a: str | None
    c: int           # terminal columns, rows
    r: int
    cmd: str | None  # a command to run instead of a login shell
    x: int           # expiry, seconds since the epoch
    o: dict[str, Any] | None = None  # the kind's options (a file's path and size, a forward's host and port...)

    @property
    def actor(self) -> Actor:
        return Actor(self.pk, self.pi, self.pn, self.a)


_grant_decoder = msgspec.json.Decoder(Grant)


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class Limits:
    per_device: int
    total: int
    idle_seconds: float
    role: str
    copy_max_bytes: int = 1024 << 20
    record_dir: Path | None = None  # where terminal sessions are recorded; None: they are not


@dataclass
class Session:
    """One session on a channel, as the operator's side sees it."""

    id: int
    channel: Channel
    grant: Grant
    started: float = field(default_factory=time.time)
    # Events for the operator: ("opened", info) ("data", bytes) ("exit", status) ("closed", reason)
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    credit: int = WINDOW_BYTES  # DATA bytes the agent will still take
    credit_changed: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_in: int = 0   # operator → device
    bytes_out: int = 0  # device → operator
    last_activity: float = field(default_factory=time.monotonic)
    ended: str | None = None  # why, once it ended
    info: dict[str, Any] = field(default_factory=dict)  # the agent's OPENED: user, pid (a file's size...)
    max_bytes: int | None = None  # the most this session may carry either way (file copies)
    recorder: Recorder | None = None  # what the operator was sent, when terminals are recorded

    def end(self, event: str, value: Any) -> None:
        if self.ended is None:
            self.ended = event
            self.events.put_nowait((event, value))
            self.credit_changed.set()

    async def send_input(self, data: bytes) -> None:
        """Operator bytes to the device, as fast as its window lets them go."""
        if self.max_bytes is not None and self.bytes_in + len(data) > self.max_bytes:
            raise ResourceExhausted(f"the session carried more than {self.max_bytes} bytes (remote_copy_max_mib)")
        view = memoryview(data)
        while view and self.ended is None:
            if self.credit <= 0:
                self.credit_changed.clear()
                await self.credit_changed.wait()
                continue
            chunk = bytes(view[: self.credit])
            view = view[len(chunk):]
            self.credit -= len(chunk)
            self.bytes_in += len(chunk)
            self.last_activity = time.monotonic()
            await self.channel.send(frames.pack(self.id, Frame.DATA, chunk))

    async def send_eof(self) -> None:
        """The end of the operator's input (a file put's, a forward's): an empty DATA frame."""
        if self.ended is None:
            await self.channel.send(frames.pack(self.id, Frame.DATA, b""))

    def over_limit(self) -> bool:
        return self.max_bytes is not None and self.bytes_out > self.max_bytes

    async def resize(self, cols: int, rows: int) -> None:
        if not (0 < cols < 65536 and 0 < rows < 65536):
            raise InvalidArgument(f"a terminal size is 1..65535 columns and rows, got {cols}x{rows}")
        if self.recorder is not None:
            self.recorder.record(RECORDED_RESIZE, RESIZE.pack(cols, rows))
        await self.channel.send(frames.pack(self.id, Frame.RESIZE, RESIZE.pack(cols, rows)))

    async def delivered(self, n: int) -> None:
        """The operator took ``n`` bytes of output: the agent may send that many more."""
        self.last_activity = time.monotonic()
        await self.channel.send(frames.pack(self.id, Frame.WINDOW, CREDIT.pack(n)))


class Channel:
    """A device's open channel: its WebSocket (as functions) and its sessions."""

    def __init__(self, device_id: str, send: Callable[[bytes], Awaitable[None]],
                 close: Callable[[str], Awaitable[None]], info: dict[str, Any]) -> None:
        self.device_id = device_id
        self._send = send
        self.close = close
        self.info = info
        self.sessions: dict[int, Session] = {}
        self._next = 0
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: bytes) -> None:
        if self.closed:
            return
        async with self._lock:
            await self._send(message)

    def new_session(self, grant: Grant) -> Session:
        self._next += 1
        s = Session(self._next, self, grant)
        self.sessions[s.id] = s
        return s

    def dispatch(self, message: bytes) -> None:
        """A frame from the agent."""
        sid, frame, payload = frames.unpack(message)
        s = self.sessions.get(sid)
        if s is None:
            return  # a session that already ended here; its last frames cross the CLOSE
        if frame is Frame.DATA:
            s.bytes_out += len(payload)
            s.last_activity = time.monotonic()
            s.events.put_nowait(("data", payload))
        elif frame is Frame.WINDOW and len(payload) == CREDIT.size:
            s.credit += CREDIT.unpack(payload)[0]
            s.credit_changed.set()
        elif frame is Frame.OPENED:
            s.events.put_nowait(("opened", frames.json_payload(payload, "OPENED")))
        elif frame is Frame.EXIT and len(payload) == EXIT.size:
            self.sessions.pop(sid, None)
            s.end("exit", EXIT.unpack(payload)[0])
        elif frame is Frame.CLOSE:
            self.sessions.pop(sid, None)
            s.end("closed", payload.decode(errors="replace") or "the device closed the session")
        else:
            raise InvalidArgument(f"unexpected {frame.name} frame from the agent on session {sid}")

    def lost(self, reason: str) -> None:
        self.closed = True
        for s in list(self.sessions.values()):
            s.end("closed", reason)
        self.sessions.clear()


class RemoteHub:
    """This process's channels, its session grants and caps."""

    def __init__(self, store: Any, key: bytes, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self._mac_key = hashlib.sha256(b"fleetd remote sessions\0" + key).digest()
        self.channels: dict[str, Channel] = {}
        self._used: dict[str, float] = {}  # redeemed grants → expiry: single use

    # --- grants -------------------------------------------------------------------------------------------
    def check_allowed(self, principal: Principal) -> None:
        if principal.kind == "device" or not principal.has_role(self.limits.role):
            raise PermissionDenied(f"remote sessions need the {self.limits.role} role (remote_role in the server's "
                                   f"settings); you are {principal.role or principal.kind}")

    def grant(self, principal: Principal, remote_addr: str | None, device_id: str, kind: str, cols: int, rows: int,
              command: str | None, options: dict[str, Any] | None = None) -> tuple[Grant, str]:
        """A single-use token for one session; the caller checked the principal (:meth:`check_allowed`)."""
        self.check_allowed(principal)
        if kind not in set(Kind):
            raise InvalidArgument(f"kind must be one of {', '.join(Kind)}, got {kind!r}")
        if not (0 < cols < 65536 and 0 < rows < 65536):
            raise InvalidArgument(f"cols and rows must be 1..65535, got {cols}x{rows}")
        if command is not None and (not command.strip() or len(command) > MAX_COMMAND):
            raise InvalidArgument(f"command must be 1..{MAX_COMMAND} characters, not blank")
        if command is not None and kind != Kind.TERMINAL:
            raise InvalidArgument(f"a {kind} session takes no command")
        opts = check_options(Kind(kind), options or {}, self.limits.copy_max_bytes)
        self.channel_of(device_id)  # fail now, not at the WebSocket, when there is no channel here
        g = Grant(new_id("rs"), device_id, kind, principal.kind, principal.id, principal.name, remote_addr, cols, rows,
                  command, int(time.time()) + GRANT_TTL, opts or None)
        payload = _b64e(msgspec.json.encode(g))
        return g, f"{TOKEN_PREFIX}{payload}.{_b64e(self._mac(payload))}"

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._mac_key, payload.encode(), hashlib.sha256).digest()[:24]

    def redeem(self, token: str) -> Grant:
        """The grant a token carries, once: a second use, a bad MAC or an expired token is refused."""
        payload, _, mac = token.removeprefix(TOKEN_PREFIX).partition(".")
        if not token.startswith(TOKEN_PREFIX) or not hmac.compare_digest(_b64e(self._mac(payload)), mac):
            raise Unauthenticated("the session token is not valid: ask for a session again (POST /v1/remote/sessions)")
        g = _grant_decoder.decode(_b64d(payload))
        now = time.time()
        if g.x < now:
            raise Unauthenticated(f"the session token expired (they last {GRANT_TTL} s): ask for a session again")
        self._used = {k: v for k, v in self._used.items() if v >= now} if len(self._used) > 1000 else self._used
        if g.s in self._used:
            raise Unauthenticated("the session token was already used: each opens one session")
        self._used[g.s] = g.x
        return g

    # --- channels -----------------------------------------------------------------------------------------
    def channel_of(self, device_id: str) -> Channel:
        ch = self.channels.get(device_id)
        if ch is None or ch.closed:
            raise FailedPrecondition(
                f"device {device_id} has no remote-access channel open to this server: its agent has remote access "
                "off (remote_access = true in its agent.conf, or install it with --remote-access), or it is offline. "
                "With several server replicas (PostgreSQL), sessions are not relayed between replicas yet: the "
                "session must reach the replica that holds the device's channel")
        return ch

    async def attach(self, channel: Channel) -> None:
        """A device's new channel replaces its old one (an agent that reconnected before the old socket timed out)."""
        old = self.channels.get(channel.device_id)
        self.channels[channel.device_id] = channel
        if old is not None and old is not channel:
            old.lost("the device opened a new channel")
            await old.close("replaced by the device's new channel")

    def detach(self, channel: Channel, reason: str) -> None:
        channel.lost(reason)
        if self.channels.get(channel.device_id) is channel:
            del self.channels[channel.device_id]

    def session_count(self) -> int:
        return sum(len(c.sessions) for c in self.channels.values())

    # --- sessions -----------------------------------------------------------------------------------------
    async def open(self, g: Grant) -> Session:
        """Open the granted session on the device's channel; raises with the reason when it cannot."""
        try:
            ch = self.channel_of(g.d)
            if len(ch.sessions) >= self.limits.per_device:
                raise ResourceExhausted(f"device {g.d} has {len(ch.sessions)} remote sessions open, the most "
                                        "allowed (remote_sessions_per_device); close one first")
            if self.session_count() >= self.limits.total:
                raise ResourceExhausted(f"this server has {self.limits.total} remote sessions open, the most "
                                        "allowed (remote_sessions_total); close one first")
            s = ch.new_session(g)
            await ch.send(frames.pack_json(s.id, Frame.OPEN, {**(g.o or {}), "kind": g.k, "cols": g.c, "rows": g.r,
                                                              "command": g.cmd}))
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    event, value = await s.events.get()
            except TimeoutError:
                ch.sessions.pop(s.id, None)
                await ch.send(frames.pack(s.id, Frame.CLOSE, b"no answer in time"))
                raise FailedPrecondition(f"device {g.d} did not open the session within {OPEN_TIMEOUT:g} s") from None
            if event != "opened":
                ch.sessions.pop(s.id, None)
                raise FailedPrecondition(f"device {g.d} refused the session: {value}")
            if g.k in (Kind.FILE_GET, Kind.FILE_PUT):
                s.max_bytes = self.limits.copy_max_bytes
                size = value.get("size")
                if not isinstance(size, int) or size > s.max_bytes:
                    await self.close(s, "too large")
                    raise FailedPrecondition(f"{value.get('path')} is {size} bytes on device {g.d}, more than the "
                                             f"{s.max_bytes} bytes allowed (remote_copy_max_mib)")
        except (FailedPrecondition, ResourceExhausted) as e:
            await self._audit(g, "denied", reason=e.message)
            raise
        s.info = value
        if self.limits.record_dir is not None and g.k == Kind.TERMINAL:
            try:
                s.recorder = Recorder(self.limits.record_dir, g.s, {
                    "session": g.s, "device": g.d, "user": value.get("user"), "cols": g.c, "rows": g.r,
                    "command": g.cmd, "started": s.started})
            except OSError as e:  # a full disk, say: no recording, and the session is refused (it must be recorded)
                await self.close(s, "cannot record the session")
                raise FailedPrecondition(f"cannot record the session (remote_record_terminals): {e}") from None
        await self._audit(g, "ok", "device.remote_session_open", user=value.get("user"))
        return s

    async def close(self, s: Session, reason: str) -> None:
        """End the session from the server's side (the operator left, or it idled)."""
        if s.channel.sessions.pop(s.id, None) is not None:
            await s.channel.send(frames.pack(s.id, Frame.CLOSE, reason.encode()))
        s.end("closed", reason)

    async def finished(self, s: Session, how: str, exit_status: int | None = None) -> None:
        recording: dict[str, Any] = {}
        if s.recorder is not None:
            s.recorder.close()
            recording = s.recorder.summary()
        await self._audit(s.grant, "ok", started=s.started, ended=time.time(), bytes_in=s.bytes_in,
                          bytes_out=s.bytes_out, end=how, exit_status=exit_status, **recording)

    async def denied(self, actor: Actor, device_id: str, kind: str, command: str | None, reason: str) -> None:
        """A session asked for and refused before it had a grant (the role, no channel here)."""
        await self.write_audit(actor, "device.remote_session", device_id, "denied", kind=kind, command=command,
                                reason=reason)

    async def _audit(self, g: Grant, outcome: str, action: str = "device.remote_session", **details: Any) -> None:
        await self.write_audit(g.actor, action, g.d, outcome, session=g.s, kind=g.k, command=g.cmd,
                                **{**(g.o or {}), **details})

    async def write_audit(self, actor: Actor, action: str, device_id: str, outcome: str, **details: Any) -> None:
        def write(conn: Any) -> None:
            audit.record(conn, actor, action, device_id, outcome, **{k: v for k, v in details.items() if v is not None})

        try:
            await self.store.write(write)
        except Exception:  # the session's own fate does not hang on its audit line; the log says it was lost
            log.exception("could not write the audit entry %s of device %s: %s", action, device_id, details)


def check_options(kind: Kind, o: dict[str, Any], copy_max: int) -> dict[str, Any]:
    """A kind's options, checked: what its OPEN carries besides the kind (and what the audit shows)."""
    def text(name: str, most: int) -> str:
        v = o.get(name)
        if not isinstance(v, str) or not v or len(v) > most or "\0" in v:
            raise InvalidArgument(f"a {kind} session needs {name}: a string of 1..{most} characters")
        return v

    allowed = {Kind.TERMINAL: set(), Kind.FILE_GET: {"path"}, Kind.FILE_PUT: {"path", "size", "name"},
               Kind.FORWARD: {"host", "port"}, Kind.LOGS: {"app", "lines", "follow"}}[kind]
    if extra := set(o) - allowed:
        raise InvalidArgument(f"a {kind} session takes {', '.join(sorted(allowed)) or 'no options'}, not "
                              f"{', '.join(sorted(extra))}")
    if kind in (Kind.FILE_GET, Kind.FILE_PUT):
        path = text("path", 4096)
        if not path.startswith("/"):
            raise InvalidArgument(f"a file copy needs an absolute path on the device, got {path!r}")
        if kind is Kind.FILE_GET:
            return {"path": path}
        size = o.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= copy_max:
            raise InvalidArgument(f"the file is {size} bytes: a copy is at most {copy_max} bytes "
                                  "(remote_copy_max_mib in the server's settings)")
        return {"path": path, "size": size, **({"name": text("name", 255)} if o.get("name") is not None else {})}
    if kind is Kind.FORWARD:
        port = o.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise InvalidArgument(f"a forward needs a port 1..65535, got {port!r}")
        return {"host": text("host", 253), "port": port}
    if kind is Kind.LOGS:
        lines, follow = o.get("lines", 200), o.get("follow", True)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= 2000:
            raise InvalidArgument(f"lines must be 0..2000, got {lines!r}")
        if not isinstance(follow, bool):
            raise InvalidArgument("follow is true or false")
        return {"app": text("app", 128), "lines": lines, "follow": follow}
    return {}
