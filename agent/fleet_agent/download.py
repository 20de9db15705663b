"""Resumable artifact downloads into ``staging/<sha256>.part`` (docs/protocol.md §12).

The part file grows only with bytes that were written and hashed, so after any
interruption (network, agent restart, power cut, full disk) it is a valid
prefix of the blob and the next attempt asks for the rest with
``Range: bytes=<n>-`` and ``If-Range: "<sha256>"``. A complete download is
checked against the manifest's size and SHA-256 and renamed to
``staging/<sha256>``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from .durable import fsync_dir
from .verify import VerificationError, check_digest, file_digest

CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
Progress = Callable[[int, int], None]  # (bytes so far, total)


class DownloadError(Exception):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


def blob_url(client: Any, artifact_url: str, sha256: str) -> str:
    """The artifact's URL when it names the server we talk to, else the same path on that server.

    The bearer token is never sent to another host (protocol §12).
    """
    base = str(client.base_url).rstrip("/")
    url = urljoin(base + "/", artifact_url or "")
    mine, theirs = urlsplit(base), urlsplit(url)
    if (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc):
        return url
    return base + (theirs.path or f"/v1/blobs/{sha256}")


def redirect_target(server: str, url: str, location: str) -> str:
    """Where a download's redirect may lead (a pre-signed URL of the server's S3 bucket): to https anywhere, or to
    the scheme the server itself uses; refused otherwise. The bucket's certificate is checked against the system's
    CAs, not the fleet's: the bytes are checked against the signed manifest's SHA-256 whoever sends them."""
    target = urljoin(url, location)
    parts = urlsplit(target)
    if parts.scheme != "https" and parts.scheme != urlsplit(server).scheme:
        raise DownloadError(f"the server redirected the download to {parts.scheme}://{parts.netloc}, which is not "
                            "https: refused. Give the server's S3 endpoint an https URL.", transient=False)
    return target


@contextmanager
def _get(client: Any, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """The answer to a GET of ``url``, a redirect followed once (without the token and If-Range: another host,
    whose ETag is not the sha256)."""
    with client.http.stream("GET", url, headers=headers) as r:
        location = r.headers.get("location") if r.status_code in REDIRECTS else None
        if not location:
            yield r
            return
    target = redirect_target(str(client.base_url), url, location)
    kept = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "if-range")}
    with httpx.Client(timeout=client.http.timeout) as other, other.stream("GET", target, headers=kept) as r:
        if r.status_code not in (200, 206):
            # e.g. a pre-signed URL that expired: the next attempt asks the server for a fresh one.
            raise DownloadError(f"the redirected download from {urlsplit(target).netloc} answered HTTP "
                                f"{r.status_code}", transient=True)
        yield r


def _forget_token(client: Any) -> None:
    # A 401 mid-download: the token expired. ServerClient.forget_token makes auth_headers() fetch a fresh one.
    fn = getattr(client, "forget_token", None)
    if callable(fn):
        fn()


class _Part:
    """The part file and the hash of its bytes, kept in step (unbuffered, so nothing is written behind our back)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        self.length = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size > size:
            self.reset()
            return
        # Resuming: re-hash what is already there.
        while True:
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                break
            self.hash.update(chunk)
            self.length += len(chunk)

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        self.hash = hashlib.sha256()
        self.length = 0

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view[:CHUNK], self.length)
            except OSError:
                # Keep only the bytes known to be whole; they match the hash.
                try:
                    os.ftruncate(self.fd, self.length)
                except OSError:
                    self.close()
                    self.path.unlink(missing_ok=True)
                raise
            self.hash.update(view[:n])
            self.length += n
            view = view[n:]

    def finish(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def download(client: Any, artifact: dict[str, Any], staging: Path, progress: Progress | None = None,
             deadline: float = 900.0) -> Path:
    """Fetch ``artifact`` into ``staging/<sha256>``, resuming a part file; retry transient errors until ``deadline`` s.

    Returns the complete file, whose size and SHA-256 match the artifact's. The
    caller checks the artifact's manifest before calling this.
    """
    sha, size = str(artifact["sha256"]), int(artifact["size"])
    final = staging / sha
    if final.exists():
        if file_digest(final) == (size, sha):
            return final
        final.unlink()
    url = blob_url(client, str(artifact.get("url") or ""), sha)
    give_up = time.monotonic() + deadline
    delay = 1.0
    part = _Part(staging / f"{sha}.part", size)
    try:
        while True:
            try:
                _fetch(client, url, sha, size, part, progress)
                break
            except DownloadError as e:
                if not e.transient or time.monotonic() + delay > give_up:
                    raise
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 60.0)
        part.finish()
        try:
            check_digest(part.length, part.hash.hexdigest(), {"size": size, "sha256": sha})
        except VerificationError as e:
            part.reset()
            raise DownloadError(f"the downloaded file is not the artifact: {e.message}", transient=False) from None
    finally:
        part.close()
    os.replace(part.path, final)
    fsync_dir(staging)
    return final


def _fetch(client: Any, url: str, sha: str, size: int, part: _Part, progress: Progress | None) -> None:
    """One request for whatever is missing. Raises DownloadError."""
    refreshed = restarted = False
    while True:
        if part.length == size:
            return
        headers = dict(client.auth_headers())
        if part.length:
            headers["Range"] = f"bytes={part.length}-"
            headers["If-Range"] = f'"{sha}"'
        try:
            with _get(client, url, headers) as r:
                if r.status_code == 401 and not refreshed:
                    refreshed = True
                    _forget_token(client)
                    continue
                if r.status_code == 416 and part.length and not restarted:
                    # Our part does not fit the blob: start over.
                    restarted = True
                    part.reset()
                    continue
                if r.status_code == 206:
                    start = _range_start(r.headers.get("content-range", ""))
                    if start != part.length:
                        raise DownloadError(f"the server resumed at byte {start}, not {part.length}", True)
                elif r.status_code == 200:
                    part.reset()
                else:
                    r.read()
                    raise _http_error(r, url)
                for chunk in r.iter_bytes():
                    if part.length + len(chunk) > size:
                        part.reset()
                        raise DownloadError(f"the server sent more than the {size} bytes the manifest announces",
                                            transient=False)
                    part.append(chunk)
                    if progress is not None:
                        progress(part.length, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DownloadError(f"no space left on the device in {part.path.parent} after {part.length} of "
                                    f"{size} bytes; free some space and deploy again (the download resumes)",
                                    transient=False) from None
            raise DownloadError(f"cannot write {part.path}: {e}", transient=False) from None
        except httpx.HTTPError as e:
            raise DownloadError(f"download from {url} interrupted after {part.length} of {size} bytes: "
                                f"{type(e).__name__}: {e}", transient=True) from None
        if part.length != size:
            raise DownloadError(f"the server closed the download after {part.length} of {size} bytes", True)
        return


def _range_start(content_range: str) -> int:
    # "bytes a-b/size"
    try:
        return int(content_range.split(" ", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return -1


def _http_error(r: httpx.Response, url: str) -> DownloadError:
    try:
        message = str(r.json().get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    transient = r.status_code in (408, 429) or r.status_code >= 500
    return DownloadError(f"GET {url} answered HTTP {r.status_code}" + (f": {message}" if message else ""), transient)
