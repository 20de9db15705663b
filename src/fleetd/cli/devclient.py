"""An asynchronous device client: enroll, authenticate, check in, report, push telemetry, download, verify.

It speaks only the device protocol (Connect JSON and ``GET /v1/blobs/{sha256}``
over HTTPS), as a real device does; the Structs it decodes answers into are the
protocol's published message types. Many clients can share one
``httpx.AsyncClient`` and so one connection pool.

Errors are :class:`DeviceError` with the server's Connect code and message;
``unavailable`` stands for "could not reach the server". A file that is not
what the fleet signed raises :class:`VerificationError`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..artifacts.catalog import ArtifactRef
from ..core.errors import FleetdError
from ..core.names import DEVICE_TYPE_PATTERN, matches_any
from ..devices.device_api import (
    AuthenticateResponse,
    ChallengeResponse,
    CheckInResponse,
    EnrollResponse,
    IssueCertificateResponse,
    PushTelemetryResponse,
    ReportStatusResponse,
)

T = TypeVar("T")

SERVICE_PATH = "/fleetd.v1.DeviceService/"
MANIFEST_FORMAT = "fleetd-manifest-v1"
# Re-authenticate this long before the bearer token expires.
REAUTH_MARGIN = 60.0
# Downloaded bytes are hashed and written on a worker thread in batches of this size.
DOWNLOAD_BATCH = 1 << 20
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # a pre-signed download (s3_presigned_downloads) answers 307
# Connect codes worth retrying later rather than giving up on.
TRANSIENT_CODES = frozenset({"unavailable", "resource_exhausted", "internal", "unknown", "deadline_exceeded",
                             "aborted"})


class DeviceError(FleetdError):
    """An error answer (or no answer) from the server, with its Connect code."""

    def __init__(self, code: str, message: str, http_status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class VerificationError(DeviceError):
    """The artifact is not what the fleet signed: bad signature, mismatched manifest, wrong bytes."""

    def __init__(self, message: str) -> None:
        super().__init__("data_loss", message)


@dataclass(frozen=True)
class Download:
    sha256: str
    size: int
    path: Path | None = None


def challenge_message(device_id: str, nonce: str) -> bytes:
    """What a device signs to authenticate (docs/protocol.md)."""
    return f"fleetd-auth-v1:{device_id}:{nonce}".encode()


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_private_key(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def join_token_ca_fingerprint(token: str) -> str:
    """The fleet CA's SHA-256 (hex) that a join token ``fdj1.<fp>.<id>.<secret>`` carries."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != "fdj1" or len(parts[1]) != 64:
        raise DeviceError("invalid_argument", "a join token looks like fdj1.<CA fingerprint>.<id>.<secret>; "
                          "copy it whole from 'fleetd tokens create'")
    return parts[1].lower()


async def fetch_pinned_ca(server: str, fingerprint: str, timeout: float = 10.0) -> str:
    """Fetch ``/v1/ca.pem`` without trusting anyone, and accept it only if its SHA-256 is ``fingerprint``.

    This is how a device bootstraps trust from a join token (like k3s join tokens).
    """
    url = server.rstrip("/") + "/v1/ca.pem"
    try:
        async with httpx.AsyncClient(verify=False, timeout=timeout) as c:  # trusted by the hash check below
            r = await c.get(url)
    except httpx.HTTPError as e:
        raise DeviceError("unavailable", f"cannot fetch the fleet CA from {url}: {e}") from None
    if r.status_code != 200:
        raise DeviceError("unavailable", f"GET {url} answered HTTP {r.status_code}", r.status_code)
    pem = r.text
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:
        raise DeviceError("invalid_argument", f"{url} did not return a PEM certificate") from None
    got = hashlib.sha256(der).hexdigest()
    if not secrets.compare_digest(got, fingerprint.lower()):
        raise DeviceError("permission_denied", f"the server's CA has fingerprint {got}, but the join token pins "
                          f"{fingerprint}: this is not the fleet the token belongs to")
    return pem


def _error_from(r: httpx.Response) -> DeviceError:
    retry_after = None
    if "retry-after" in r.headers:
        try:
            retry_after = float(r.headers["retry-after"])
        except ValueError:
            retry_after = None
    try:
        body = r.json()
        code, message = str(body.get("code", "unknown")), str(body.get("message", ""))
    except (ValueError, AttributeError):
        code = "unavailable" if r.status_code in (502, 503, 504) else "unknown"
        message = f"HTTP {r.status_code}: {r.text[:200]}"
    return DeviceError(code, message or f"HTTP {r.status_code}", r.status_code, retry_after)


def redirect_target(server: str, url: str, location: str) -> str:
    """Where a download's redirect may lead: https anywhere, or the server's own scheme; DeviceError otherwise."""
    target = urljoin(url, location)
    parts = urlsplit(target)
    if parts.scheme != "https" and parts.scheme != urlsplit(server).scheme:
        raise DeviceError("failed_precondition", f"the server redirected the download to {parts.scheme}://"
                          f"{parts.netloc}, which is not https: refused. Give the server's S3 endpoint an https URL.")
    return target


def _unreachable(server: str, e: Exception) -> DeviceError:
    return DeviceError("unavailable", f"cannot reach {server}: {type(e).__name__}: {e}")


class DeviceClient:
    """One device. Keeps its key, device id, pinned signing key and bearer token."""

    def __init__(self, http: httpx.AsyncClient, server: str, hardware_id: str, device_type: str,
                 key: Ed25519PrivateKey | None = None, *, device_id: str = "",
                 signing_public_key: bytes | None = None) -> None:
        self.http = http
        self.server = server.rstrip("/")
        self.hardware_id = hardware_id
        self.device_type = device_type
        self.key = key or Ed25519PrivateKey.generate()
        self.device_id = device_id
        self.signing_public_key = signing_public_key
        self.status = ""
        self.poll_interval = 0
        self.claim_code = ""
        self.ca_fingerprint = ""
        self._token = ""
        self._token_expires = 0.0
        self._auth_lock = asyncio.Lock()

    # --- identity ------------------------------------------------------------
    @property
    def needs_auth(self) -> bool:
        return not self._token or time.monotonic() >= self._token_expires - REAUTH_MARGIN

    def forget_token(self) -> None:
        self._token = ""

    async def enroll(self, token: str = "", *, name: str = "", inventory: Mapping[str, Any] | None = None
                     ) -> EnrollResponse:
        """Register this device's public key; with a join token it is active at once, else pending."""
        body: dict[str, Any] = {"hardware_id": self.hardware_id, "device_type": self.device_type,
                                "public_key": b64(raw_public_key(self.key)), "token": token, "name": name}
        if inventory is not None:
            body["inventory"] = dict(inventory)
        resp = await self._post("Enroll", body, EnrollResponse, auth=False)
        self.device_id, self.status, self.poll_interval = resp.device_id, resp.status, resp.poll_interval
        self.claim_code, self.ca_fingerprint = resp.claim_code, resp.ca_fingerprint
        self.signing_public_key = base64.b64decode(resp.signing_public_key)
        self._token = ""
        return resp

    async def authenticate(self) -> AuthenticateResponse:
        """Sign a fresh server challenge and take the bearer token it buys."""
        if not self.device_id:
            raise DeviceError("failed_precondition", f"device {self.hardware_id} has not enrolled yet")
        async with self._auth_lock:
            ch = await self._post("GetChallenge", {"device_id": self.device_id}, ChallengeResponse, auth=False)
            sig = self.key.sign(challenge_message(self.device_id, ch.nonce))
            resp = await self._post("Authenticate", {"device_id": self.device_id, "nonce": ch.nonce,
                                                     "signature": b64(sig)}, AuthenticateResponse, auth=False)
            self._token = resp.token
            self._token_expires = time.monotonic() + resp.expires_in
            self.status = resp.status
            return resp

    # --- the device calls ------------------------------------------------------
    async def check_in(self, inventory: Mapping[str, Any] | None = None,
                       components: Sequence[Mapping[str, Any]] = ()) -> CheckInResponse:
        """Heartbeat: report inventory and components; get the poll interval and pending actions.

        ``components`` is everything installed: one left out is taken as removed.
        """
        body: dict[str, Any] = {"components": [dict(c) for c in components]}
        if inventory is not None:
            body["inventory"] = dict(inventory)
        resp = await self._post("CheckIn", body, CheckInResponse)
        self.status, self.poll_interval = resp.status, resp.poll_interval
        return resp

    async def report(self, action_id: str, state: str, message: str = "", progress: int = 0,
                     result: Mapping[str, Any] | None = None) -> ReportStatusResponse:
        """Move an action on; ``result`` only with the succeeded report of a kind that brings one back (logs)."""
        body: dict[str, Any] = {"action_id": action_id, "state": state, "message": message, "progress": progress}
        if result is not None:
            body["result"] = dict(result)
        return await self._post("ReportStatus", body, ReportStatusResponse)

    async def push_telemetry(self, points: Sequence[Mapping[str, Any]]) -> int:
        """Send points ``{name, value, ts?, tags?}``; returns how many the server committed."""
        resp = await self._post("PushTelemetry", {"points": [dict(p) for p in points]}, PushTelemetryResponse)
        return resp.accepted

    async def issue_certificate(self, csr: str) -> IssueCertificateResponse:
        """A client certificate from the fleet CA for the key of ``csr`` (PEM); renew by asking again."""
        return await self._post("IssueCertificate", {"csr": csr}, IssueCertificateResponse)

    # --- artifacts -----------------------------------------------------------------
    def blob_url(self, ref: ArtifactRef) -> str:
        """Where to fetch ``ref`` from.

        The reference's URL when it names the server this client talks to;
        otherwise the same path on this server. The bearer token belongs to the
        server the device authenticated with and is never sent elsewhere, and a
        server's advertised public URL may name an address this device cannot reach.
        """
        url = urljoin(self.server + "/", ref.url)
        mine, theirs = urlsplit(self.server), urlsplit(url)
        if (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc):
            return url
        return f"{self.server}{theirs.path or '/v1/blobs/' + ref.sha256}"

    async def download(self, ref: ArtifactRef, sink: str | Path | Callable[[bytes], object] | None = None
                       ) -> Download:
        """Stream the artifact, hashing on the fly; flat memory whatever its size.

        ``sink`` is a file path (written temp → fsync → rename once complete), a
        callable that gets each batch of bytes, or None to only hash.
        """
        url = self.blob_url(ref)
        for attempt in (0, 1):
            await self._ensure_token()
            try:
                async with self.http.stream("GET", url, headers={"Authorization": f"Bearer {self._token}"}) as r:
                    if r.status_code == 401 and attempt == 0:
                        self._token = ""
                        continue
                    location = r.headers.get("location") if r.status_code in REDIRECTS else None
                    if r.status_code != 200 and not location:
                        await r.aread()
                        raise _error_from(r)
                    if not location:
                        return await self._consume(r, ref, sink)
            except httpx.HTTPError as e:
                raise _unreachable(self.server, e) from None
            return await self._download_redirected(redirect_target(self.server, url, location), ref, sink)
        raise DeviceError("unauthenticated", "the server refused this device's fresh token for the download", 401)

    async def _download_redirected(self, target: str, ref: ArtifactRef,
                                   sink: str | Path | Callable[[bytes], object] | None) -> Download:
        """Fetch a redirect's target (a pre-signed URL of the server's bucket) without the token; the bytes are
        checked against the signed manifest as always."""
        host = urlsplit(target).netloc
        try:
            async with httpx.AsyncClient(timeout=self.http.timeout) as other, other.stream("GET", target) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise DeviceError("unavailable", f"the redirected download from {host} answered HTTP "
                                      f"{r.status_code}", r.status_code)
                return await self._consume(r, ref, sink)
        except httpx.HTTPError as e:
            raise _unreachable(host, e) from None

    async def _consume(self, r: httpx.Response, ref: ArtifactRef,
                       sink: str | Path | Callable[[bytes], object] | None) -> Download:
        h = hashlib.sha256()
        path = Path(sink) if isinstance(sink, (str, Path)) else None
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part") if path else None
        f = await asyncio.to_thread(open, tmp, "wb") if tmp else None

        def consume(batch: bytes) -> None:
            h.update(batch)
            if f is not None:
                f.write(batch)
            elif callable(sink):
                sink(batch)

        size, buf = 0, bytearray()
        try:
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > ref.size:
                    raise VerificationError(f"the server sent more than the {ref.size} bytes the reference "
                                            "announces")
                buf += chunk
                if len(buf) >= DOWNLOAD_BATCH:
                    batch, buf = bytes(buf), bytearray()
                    await asyncio.to_thread(consume, batch)
            await asyncio.to_thread(consume, bytes(buf))
            if f is not None and path is not None and tmp is not None:
                def finish() -> None:
                    f.flush()
                    os.fsync(f.fileno())
                    f.close()
                    os.replace(tmp, path)
                await asyncio.to_thread(finish)
        except BaseException:
            if f is not None and tmp is not None:
                f.close()
                tmp.unlink(missing_ok=True)
            raise
        return Download(sha256=h.hexdigest(), size=size, path=path)

    def verify(self, ref: ArtifactRef, signing_public_key: bytes | None = None,
               download: Download | None = None) -> dict[str, Any]:
        """Check ``ref`` against the pinned fleet signing key and, given one, the downloaded file.

        Raises VerificationError with the reason; returns the manifest.
        """
        key = signing_public_key or self.signing_public_key
        if key is None:
            raise VerificationError("no fleet signing key pinned (it comes with enrollment)")
        return verify_artifact(ref, key, download, device_type=self.device_type)

    # --- transport -------------------------------------------------------------------
    async def _ensure_token(self) -> None:
        if self.needs_auth:
            await self.authenticate()

    async def _post(self, method: str, body: dict[str, Any], typ: type[T], *, auth: bool = True) -> T:
        for attempt in (0, 1):
            headers = {"Content-Type": "application/json"}
            if auth:
                await self._ensure_token()
                headers["Authorization"] = f"Bearer {self._token}"
            try:
                r = await self.http.post(self.server + SERVICE_PATH + method, content=msgspec.json.encode(body),
                                         headers=headers)
            except httpx.HTTPError as e:
                raise _unreachable(self.server, e) from None
            if r.status_code == 401 and auth and attempt == 0:
                # Expired, or the server's key epoch moved on: one fresh token, one retry.
                self._token = ""
                continue
            if r.status_code != 200:
                raise _error_from(r)
            try:
                return msgspec.json.decode(r.content, type=typ)
            except msgspec.MsgspecError as e:
                raise DeviceError("internal", f"the server's {method} answer does not fit the protocol: {e}",
                                  r.status_code) from None
        raise DeviceError("unauthenticated", f"the server refused this device's fresh token for {method}", 401)


def verify_artifact(ref: ArtifactRef, signing_public_key: bytes, download: Download | None = None, *,
                    device_type: str | None = None) -> dict[str, Any]:
    """The manifest signature, the manifest against the reference, and the bytes against both."""
    manifest_bytes = ref.manifest.encode()
    try:
        signature = base64.b64decode(ref.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(signing_public_key).verify(signature, manifest_bytes)
    except (InvalidSignature, ValueError):
        raise VerificationError("the manifest signature does not match the fleet signing key") from None
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        raise VerificationError("the signed manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VerificationError(f"the manifest is not a {MANIFEST_FORMAT} manifest")
    for field in ("name", "version", "kind", "sha256", "size", "file_name"):
        if manifest.get(field) != getattr(ref, field):
            raise VerificationError(f"the manifest's {field} is {manifest.get(field)!r} but the action "
                                    f"references {getattr(ref, field)!r}")
    types = manifest.get("device_types")
    if device_type is not None and not (isinstance(types, list) and matches_any(
            (t for t in types if isinstance(t, str) and DEVICE_TYPE_PATTERN.ok(t)), device_type)):
        raise VerificationError(f"the artifact is built for {manifest.get('device_types')}, not for "
                                f"device type {device_type!r}")
    if download is not None:
        if download.size != manifest["size"]:
            raise VerificationError(f"downloaded {download.size} bytes, the manifest says {manifest['size']}")
        if download.sha256 != manifest["sha256"]:
            raise VerificationError(f"the downloaded file's SHA-256 is {download.sha256}, the manifest says "
                                    f"{manifest['sha256']}")
    return manifest


__all__ = ["DeviceClient", "DeviceError", "Download", "VerificationError", "challenge_message",
           "fetch_pinned_ca", "join_token_ca_fingerprint", "verify_artifact"]
