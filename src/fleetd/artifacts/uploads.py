"""Artifact uploads in two steps, so that bad metadata is refused before a gigabyte is sent.

1. ``ArtifactService.CreateUpload`` checks the metadata and opens an :class:`UploadSession`.
2. ``PUT /v1/uploads/{id}`` streams the file into the blob store (:func:`receive`), then
   records the artifact in one write transaction.

Sessions last an hour, are single use and belong to the principal that opened them. A single server
(SQLite) keeps them in memory: a restart forgets them, which costs a client only a new CreateUpload. Replicas on one
PostgreSQL database keep them in its upload_sessions table (:class:`SharedUploadSessions`), so that the PUT may
reach another replica than the CreateUpload.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
import msgspec

from ..accounts.audit import Actor
from ..accounts.users import Principal
from ..core.clock import to_dt
from ..core.errors import InvalidArgument, NotFound, PayloadTooLarge, PermissionDenied, ResourceExhausted
from ..store import blobs
from ..store.database import Store
from . import catalog as artifacts
from . import rtos_image, storage
from .catalog import ArtifactDetail, InstallSpec

if TYPE_CHECKING:
    from ..fleet import Fleet

log = logging.getLogger(__name__)

UPLOAD_TTL = 3600.0
MAX_SESSIONS = 1000
MAX_SESSIONS_PER_PRINCIPAL = 50
MAX_DEVICE_TYPES = 64


class PendingArtifact(msgspec.Struct, kw_only=True):
    """What CreateUpload fixed: everything about the artifact but its bytes."""

    name: str
    version: str
    kind: str
    device_types: list[str]
    file_name: str
    size: int | None  # announced; None when the client did not say
    install_spec: InstallSpec | None
    # rtos-image: the server wraps the uploaded payload in a signed image (docs/rtos-images.md).
    format: str = "raw"
    security_counter: int = 0
    # The update module (empty: app's default) and its metadata (docs/agent.md "Update modules").
    module: str = ""
    meta: dict[str, str] = {}


@dataclass
class UploadSession:
    id: str
    artifact: PendingArtifact
    owner: tuple[str, str | None]
    expires_at: float

    @property
    def expires(self) -> dt.datetime:
        t = to_dt(self.expires_at)
        assert t is not None
        return t


def _owner(p: Principal) -> tuple[str, str | None]:
    return p.kind, p.id


def too_large(size: int, cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file has {size} bytes, more than the upload limit of {cap} bytes; raise the "
                           "max_upload_bytes setting (env FLEETD_MAX_UPLOAD_BYTES) and restart the server")


def check(pending: PendingArtifact, cap: int) -> PendingArtifact:
    """Every check that needs no database; returns the pending artifact with its device types normalized."""
    types = sorted(set(pending.device_types))
    if len(types) > MAX_DEVICE_TYPES:
        raise InvalidArgument(f"at most {MAX_DEVICE_TYPES} device types per artifact")
    artifacts.check_metadata(pending.name, pending.version, pending.kind, types, pending.file_name)
    artifacts.check_install_spec(pending.kind, pending.install_spec)
    module = artifacts.check_module(pending.kind, pending.module, pending.meta, pending.install_spec)
    if pending.size is not None:
        if pending.size < 0:
            raise InvalidArgument("size must not be negative (0 means: not announced)")
        if pending.size > cap:
            raise too_large(pending.size, cap)
    _check_format(pending, types)
    return msgspec.structs.replace(pending, device_types=types, module=module)


def _check_format(pending: PendingArtifact, types: list[str]) -> None:
    if pending.format not in artifacts.FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(artifacts.FORMATS)}, got {pending.format[:40]!r}")
    if pending.format == "raw":
        if pending.security_counter:
            raise InvalidArgument("a security counter applies to --format rtos-image only")
        return
    if pending.kind != "firmware":
        raise InvalidArgument(f"--format rtos-image is for firmware; this artifact's kind is {pending.kind!r} "
                              "(pass --kind firmware)")
    if len(types) != 1:
        raise InvalidArgument(f"an RTOS image is built for exactly one device type (its header holds one), got "
                              f"{len(types)}: push one image per device type")
    rtos_image.check_device_type(types[0])
    rtos_image.check_version(pending.version)
    rtos_image.check_security_counter(pending.security_counter)
    if pending.size is not None:
        rtos_image.check_payload_size(pending.size)


def _unknown(upload_id: str, ttl: float) -> NotFound:
    return NotFound(f"upload {upload_id[:40]!r} is unknown, expired (uploads last {int(ttl // 60)} minutes) or "
                    "already used; start again with CreateUpload (fleetd artifacts push does both steps)")


def _not_yours() -> PermissionDenied:
    return PermissionDenied("this upload was opened by another user or API key; open your own")


def _too_many(ttl: float) -> ResourceExhausted:
    return ResourceExhausted("too many uploads are waiting for their file; send those first or let them "
                             f"expire (after {int(ttl // 60)} minutes)", retry_after=60)


def _new_id() -> str:
    return "up_" + secrets.token_urlsafe(18)


class UploadSessions:
    """Upload sessions in this process's memory: a single server's (SQLite)."""

    def __init__(self, ttl: float = UPLOAD_TTL) -> None:
        self.ttl = ttl
        self._sessions: dict[str, UploadSession] = {}

    def __len__(self) -> int:
        self._prune()
        return len(self._sessions)

    def _prune(self) -> None:
        t = time.time()
        for sid in [s.id for s in self._sessions.values() if s.expires_at <= t]:
            del self._sessions[sid]

    async def open(self, pending: PendingArtifact, principal: Principal) -> UploadSession:
        self._prune()
        owner = _owner(principal)
        if len(self._sessions) >= MAX_SESSIONS or sum(
                1 for s in self._sessions.values() if s.owner == owner) >= MAX_SESSIONS_PER_PRINCIPAL:
            raise _too_many(self.ttl)
        session = UploadSession(id=_new_id(), artifact=pending, owner=owner, expires_at=time.time() + self.ttl)
        self._sessions[session.id] = session
        return session

    async def take(self, upload_id: str, principal: Principal) -> UploadSession:
        """The session, removed: a second PUT (or a retry after a failure) needs a new CreateUpload."""
        self._prune()
        session = self._sessions.get(upload_id)
        if session is None:
            raise _unknown(upload_id, self.ttl)
        if session.owner != _owner(principal):
            raise _not_yours()
        del self._sessions[upload_id]
        return session


class SharedUploadSessions:
    """Upload sessions in the database (table upload_sessions), for replicas on one PostgreSQL database: the PUT
    may reach another replica than the CreateUpload. Same rules as :class:`UploadSessions`; :meth:`take` claims a
    session by deleting its row, so of two PUTs racing on two replicas one gets it. The caps are checked in the
    opening write: replicas opening at the same instant may pass them by one each."""

    def __init__(self, store: Store, ttl: float = UPLOAD_TTL) -> None:
        self.store, self.ttl = store, ttl

    async def open(self, pending: PendingArtifact, principal: Principal) -> UploadSession:
        kind, pid = _owner(principal)
        session = UploadSession(id=_new_id(), artifact=pending, owner=(kind, pid), expires_at=time.time() + self.ttl)

        def write(conn: sqlite3.Connection) -> None:
            storage.delete_expired_uploads(conn, time.time())
            total, mine = storage.upload_counts(conn, kind, pid or "")
            if total >= MAX_SESSIONS or mine >= MAX_SESSIONS_PER_PRINCIPAL:
                raise _too_many(self.ttl)
            storage.insert_upload(conn, upload_id=session.id, owner_kind=kind, owner_id=pid or "",
                                  artifact=msgspec.json.encode(pending), expires_at=session.expires_at)

        await self.store.write(write)
        return session

    async def take(self, upload_id: str, principal: Principal) -> UploadSession:
        kind, pid = _owner(principal)

        def claim(conn: sqlite3.Connection) -> UploadSession:
            t = time.time()
            row = storage.claim_upload(conn, upload_id, kind, pid or "", t)
            if row is None:
                raise _not_yours() if storage.upload_exists(conn, upload_id, t) else _unknown(upload_id, self.ttl)
            return UploadSession(id=upload_id, artifact=msgspec.json.decode(row["artifact"], type=PendingArtifact),
                                 owner=(kind, pid), expires_at=row["expires_at"])

        return await self.store.write(claim)


def sessions_for(store: Store) -> UploadSessions | SharedUploadSessions:
    """In memory on SQLite (one process); in the database on PostgreSQL (replicas)."""
    return UploadSessions() if store.dsn is None else SharedUploadSessions(store)


async def _counted(chunks: AsyncIterable[bytes], announced: int | None, counter: list[int]) -> AsyncIterator[bytes]:
    """Pass the bytes through, refusing more or fewer than announced (or none at all) before they are stored."""
    async for chunk in chunks:
        counter[0] += len(chunk)
        if announced is not None and counter[0] > announced:
            raise InvalidArgument(f"the upload sends more than the {announced} bytes announced in CreateUpload")
        yield chunk
    if counter[0] == 0:
        raise InvalidArgument("the upload is empty; send the file's bytes as the request body")
    if announced is not None and counter[0] != announced:
        raise InvalidArgument(f"the upload ended after {counter[0]} of the {announced} bytes announced "
                              "in CreateUpload")


_IMAGE_OVERHEAD = rtos_image.HEADER_SIZE + rtos_image.TLV_MAX_SIZE


def _wrapped(fleet: Fleet, pending: PendingArtifact, payload: AsyncIterable[bytes],
             size: int | None) -> AsyncIterator[bytes]:
    """The RTOS image around ``payload`` as it streams: header, the payload hashed in batches on a thread, the
    trailer signed with the fleet's key. The header holds the payload size, so it must be known up front."""
    if size is None:
        raise InvalidArgument("an rtos-image upload must announce its size (CreateUpload size or Content-Length); "
                              "the image header holds the payload size")
    builder = rtos_image.ImageBuilder(
        payload_size=size, version=pending.version, security_counter=pending.security_counter,
        device_type=pending.device_types[0], signers=[fleet.keys.signing_key])

    async def gen() -> AsyncIterator[bytes]:
        yield builder.header
        buf = bytearray()
        async for chunk in payload:
            buf += chunk
            if len(buf) >= blobs.BATCH_BYTES:
                batch, buf = bytes(buf), bytearray()
                await anyio.to_thread.run_sync(builder.update, batch)
                yield batch
        if buf:
            await anyio.to_thread.run_sync(builder.update, bytes(buf))
            yield bytes(buf)
        yield builder.trailer()
    return gen()


async def receive(fleet: Fleet, session: UploadSession, actor: Actor, chunks: AsyncIterable[bytes],
                  content_length: int | None = None) -> ArtifactDetail:
    """Store the file of an upload and record its artifact. On any failure nothing is recorded.

    A duplicate NAME@VERSION found only now (another upload won the race) is
    refused; the blob stays unreferenced and the next gc removes it.
    """
    pending = session.artifact
    cap = fleet.settings.max_upload_bytes
    if content_length is not None:
        if content_length > cap:
            raise too_large(content_length, cap)
        if pending.size is not None and content_length != pending.size:
            raise InvalidArgument(f"Content-Length is {content_length} but CreateUpload announced "
                                  f"{pending.size} bytes")
    counter = [0]
    body = _counted(chunks, pending.size, counter)
    if pending.format == "rtos-image":
        body, cap = _wrapped(fleet, pending, body, pending.size or content_length), cap + _IMAGE_OVERHEAD
    try:
        info = await fleet.blobs.put_stream(body, max_bytes=cap)
    except BaseException as e:
        log.info("upload %s (%s@%s) failed after %d bytes: %s", session.id, pending.name, pending.version,
                 counter[0], getattr(e, "message", None) or type(e).__name__)
        raise

    def record(conn):  # type: ignore[no-untyped-def]
        a = artifacts.create(conn, actor, fleet.keys.signing_key, name=pending.name, version=pending.version,
                             kind=pending.kind, device_types=pending.device_types, sha256=info.sha256,
                             size=info.size, file_name=pending.file_name, install_spec=pending.install_spec,
                             image_format=pending.format, module=pending.module, meta=pending.meta,
                             security_counter=pending.security_counter if pending.format != "raw" else None)
        return artifacts.detail(conn, a.id)

    detail: ArtifactDetail = await fleet.store.write(record)
    log.info("artifact %s@%s stored: %d bytes, sha256 %s", detail.name, detail.version, detail.size, detail.sha256)
    return detail


__all__ = ["PendingArtifact", "SharedUploadSessions", "UploadSession", "UploadSessions", "check", "receive",
           "sessions_for", "too_large"]
