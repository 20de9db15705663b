"""A small S3 client over httpx: the subset of the S3 API the blob store needs (docs/decisions.md, "S3 through a
small SigV4 client over httpx").

Synchronous, on one ``httpx.Client`` (its connection pool is shared by threads); the blob store calls it from worker
threads. Imported only when an ``s3://`` blob store is configured, never at start.

Errors are one type, :class:`S3Error`, with S3's own Code and Message from the XML body, the HTTP status and the
request id. Idempotent calls (GET, HEAD, PUT of a whole object or of one part, DELETE, listings) are retried with
backoff on 5xx, 429 and connection errors; creating and completing a multipart upload are not.

XML answers are parsed with ``xml.etree.ElementTree`` (expat): it never fetches external entities or DTDs, and the
expat it ships with (2.4.1+) limits entity expansion ("billion laughs"), but it does expand internal entities. No
S3 answer has a DOCTYPE, so :func:`parse_xml` refuses any document that declares one (and with it every entity).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import httpx

from ..core.errors import InvalidArgument, Unavailable
from .sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials, canonical_query, presign, sign_headers, uri_encode

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_COPY = 5 * 1024 ** 3  # the largest object one CopyObject copies
MAX_PARTS = 10_000
DEFAULT_PART = 8 * 1024 * 1024
READ_CHUNK = 128 * 1024
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Error(Unavailable):
    """An S3 request failed: ``status`` (0 when no answer came), S3's ``code`` and ``s3_message`` (empty when the
    answer had no XML body, e.g. a HEAD), and ``request_id`` for the storage operator."""

    def __init__(self, operation: str, status: int, code: str = "", s3_message: str = "", request_id: str = "",
                 hint: str = "") -> None:
        self.operation, self.status, self.code = operation, status, code
        self.s3_message, self.request_id = s3_message, request_id
        what = f"HTTP {status}" if status else "no answer"
        detail = ": ".join(p for p in (code, s3_message) if p)
        text = f"S3 {operation} failed ({what}{', ' + detail if detail else ''})"
        if request_id:
            text += f" [request id {request_id}]"
        hint = hint or _HINTS.get(code, "")
        super().__init__(f"{text}. {hint}" if hint else text)


_CREDENTIALS_HINT = ("Check the access key and secret key (the blob store settings, or AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY), the region, and that this machine's clock is right.")
_HINTS = {
    "SignatureDoesNotMatch": _CREDENTIALS_HINT,
    "InvalidAccessKeyId": _CREDENTIALS_HINT,
    "AccessDenied": "The keys were refused for this bucket or key: check the access key and secret key (the blob "
                    "store settings, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and the bucket's policy.",
    "NoSuchBucket": "Create the bucket, or correct its name in the blob store URL (s3://BUCKET/prefix).",
    "RequestTimeTooSkewed": "This machine's clock is too far from the server's: synchronise it (NTP).",
    "AuthorizationHeaderMalformed": "The region is probably wrong: set the one the bucket is in (AWS_REGION).",
}


def parse_xml(body: bytes) -> ET.Element:
    """An XML answer's root element; a document with a DOCTYPE (the only place entities are declared) is refused
    before any of it is expanded."""
    parser = ET.XMLParser(target=_NoDoctype())
    parser.feed(body)
    return parser.close()


class _NoDoctype(ET.TreeBuilder):
    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError("the S3 answer declares a DOCTYPE; S3 answers never do, so it is refused")


def _text(element: ET.Element, name: str, default: str = "") -> str:
    """The text of the child ``name`` (with or without S3's namespace)."""
    found = element.find(_NS + name)
    if found is None:
        found = element.find(name)
    return (found.text or "") if found is not None else default


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@dataclass(frozen=True)
class S3Config:
    """Where the bucket is and how to sign. ``endpoint`` None is AWS itself (``https://s3.REGION.amazonaws.com``,
    virtual-hosted URLs); an endpoint given (MinIO, SeaweedFS, Ceph, ...) defaults to path-style URLs."""

    bucket: str
    credentials: Credentials
    region: str = "us-east-1"
    endpoint: str | None = None
    path_style: bool | None = None
    ca_bundle: str | None = None
    timeout: float = 30.0
    retries: int = 4

    @classmethod
    def from_env(cls, bucket: str, env: Mapping[str, str] | None = None, **given: Any) -> S3Config:
        """``given`` settings (None or absent: not set) first, then the standard AWS environment:
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION),
        AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) and AWS_CA_BUNDLE."""
        env = os.environ if env is None else env
        given = {k: v for k, v in given.items() if v is not None}

        def pick(name: str, *variables: str) -> str | None:
            if name in given:
                return str(given.pop(name))
            return next((env[v] for v in variables if env.get(v)), None)

        access = pick("access_key", "AWS_ACCESS_KEY_ID")
        secret = pick("secret_key", "AWS_SECRET_ACCESS_KEY")
        token = pick("session_token", "AWS_SESSION_TOKEN")
        if not access or not secret:
            raise InvalidArgument("no S3 credentials: set the blob store's access key and secret key, or the "
                                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables")
        return cls(bucket=bucket, credentials=Credentials(access, secret, token or None),
                   region=pick("region", "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
                   endpoint=pick("endpoint", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                   ca_bundle=pick("ca_bundle", "AWS_CA_BUNDLE"), **given)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime | None = None


@dataclass(frozen=True)
class UploadResult:
    """What :meth:`S3Client.upload` stored: the object's ``etag``, its ``size`` and the hex ``digests`` of its bytes
    (``sha256`` always, plus any other hashlib names asked for)."""

    key: str
    etag: str
    size: int
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.digests["sha256"]


class ObjectStream:
    """The body of a GET, read as it arrives: ``with client.get_object(key) as obj: for chunk in obj: ...``.
    ``size`` is the number of bytes this read gives, ``total`` the whole object's size; ``first`` is the offset
    of the first byte. Closing it (or leaving the ``with``) gives the connection back."""

    def __init__(self, response: httpx.Response, size: int, total: int, first: int, skip: int = 0) -> None:
        self._response, self.size, self.total, self.first = response, size, total, first
        self._skip = skip  # bytes to drop first: a server that ignored the Range sent the whole object
        self.etag = response.headers.get("etag", "")
        self.content_type = response.headers.get("content-type", "")

    def __iter__(self) -> Iterator[bytes]:
        skip, left = self._skip, self.size
        try:
            for chunk in self._response.iter_raw(READ_CHUNK):
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if left < len(chunk):
                    chunk = chunk[:left]
                if chunk:
                    left -= len(chunk)
                    yield chunk
                if not left:
                    break
        finally:
            self.close()
        if left:
            raise S3Error("GET", self._response.status_code, "IncompleteBody",
                          f"the answer ended {left} bytes short of {self.size}")

    def read(self) -> bytes:
        return b"".join(self)

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _check_key(key: str) -> str:
    if not key or len(key.encode()) > 1024:
        raise InvalidArgument(f"an S3 key is 1 to 1024 bytes of UTF-8, not {key!r}")
    if any(part in (".", "..") for part in key.split("/")):
        raise InvalidArgument(f"S3 key {key!r} has a '.' or '..' segment, which HTTP clients rewrite: rename it")
    return key


def _range_header(start: int | None, end: int | None, suffix: int | None) -> str | None:
    if suffix is not None:
        if start is not None or end is not None or suffix <= 0:
            raise InvalidArgument("a suffix range is a positive byte count, without start or end")
        return f"bytes=-{suffix}"
    if start is None and end is None:
        return None
    first = start or 0
    if first < 0 or (end is not None and end < first):
        raise InvalidArgument(f"bad byte range {start}-{end}: 0 <= start <= end (inclusive)")
    return f"bytes={first}-{'' if end is None else end}"


class S3Client:
    """One bucket of an S3-compatible store. Thread-safe; close it (or use ``with``) to free its connections."""

    def __init__(self, config: S3Config, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.bucket:
            raise InvalidArgument("an S3 blob store needs a bucket: s3://BUCKET/prefix")
        if config.retries < 0 or config.timeout <= 0:
            raise InvalidArgument(f"S3 retries must be >= 0 and the timeout > 0, not {config.retries} and "
                                  f"{config.timeout}")
        self.config = config
        endpoint = config.endpoint or f"https://s3.{config.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise InvalidArgument(f"S3 endpoint {endpoint!r} is not a URL like https://s3.example.com[:port]")
        self.path_style = config.path_style if config.path_style is not None else config.endpoint is not None
        default_port = {"http": 80, "https": 443}[parts.scheme]
        host = parts.hostname if parts.port in (None, default_port) else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 literal
            host = f"[{parts.hostname}]" + ("" if parts.port in (None, default_port) else f":{parts.port}")
        self.host = host if self.path_style else f"{config.bucket}.{host}"
        self.base_url = f"{parts.scheme}://{self.host}"
        base_path = parts.path.rstrip("/")
        self._prefix = f"{base_path}/{config.bucket}" if self.path_style else base_path
        self._sleep = sleep
        verify: ssl.SSLContext | bool = True
        if config.ca_bundle:
            if not os.path.isfile(config.ca_bundle):
                raise InvalidArgument(f"S3 CA bundle {config.ca_bundle!r} is not a file: give a PEM file of the "
                                      "certificates that sign the S3 endpoint's")
            verify = ssl.create_default_context(cafile=config.ca_bundle)
        # identity: the bytes as stored (a gateway that compressed them would break ranges and sizes)
        self._http = httpx.Client(verify=verify, timeout=config.timeout, follow_redirects=False,
                                  headers={"accept-encoding": "identity", "user-agent": "fleetd"},
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> S3Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------------------------------

    def _path(self, key: str = "") -> str:
        return f"{self._prefix}/{key}" if key else (self._prefix or "/")

    def _request(self, method: str, key: str = "", *, query: Sequence[tuple[str, str]] = (), body: bytes = b"",
                 headers: Mapping[str, str] | None = None, payload: str | None = None) -> httpx.Request:
        path = self._path(key)
        signed = sign_headers(method, self.host, path, query, headers or {},
                              payload or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256),
                              self.config.credentials, self.config.region)
        url = self.base_url + uri_encode(path, keep_slash=True) + (f"?{canonical_query(query)}" if query else "")
        return self._http.build_request(method, url, content=body or None, headers=signed)

    def _send(self, operation: str, build: Callable[[], httpx.Request], *, ok: Iterable[int] = (200,),
              retry: bool = True, stream: bool = False) -> httpx.Response:
        """Send a freshly signed request until it is answered with an ``ok`` status; raise :class:`S3Error`.
        With ``retry``, 5xx, 429 and connection errors are tried again, ``config.retries`` times, with backoff."""
        ok = frozenset(ok)
        for attempt in range(self.config.retries + 1 if retry else 1):
            last = attempt == (self.config.retries if retry else 0)
            try:
                response = self._http.send(build(), stream=stream)
            except httpx.TransportError as e:
                if last:
                    raise S3Error(operation, 0, type(e).__name__, str(e) or "connection failed",
                                  hint=f"Is the S3 endpoint {self.base_url} up and reachable from here?") from e
                self._backoff(operation, attempt, type(e).__name__)
                continue
            if response.status_code in ok:
                return response
            if stream:
                response.read()
            if response.status_code in _RETRY_STATUS and not last:
                response.close()
                self._backoff(operation, attempt, str(response.status_code))
                continue
            raise self._error(operation, response)
        raise AssertionError("unreachable")

    def _backoff(self, operation: str, attempt: int, why: str) -> None:
        delay = min(2.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0)
        log.info("S3 %s: %s, retrying in %.2f s", operation, why, delay)
        self._sleep(delay)

    @staticmethod
    def _error(operation: str, response: httpx.Response) -> S3Error:
        code = message = ""
        request_id = response.headers.get("x-amz-request-id", "")
        if response.content:
            try:
                root = parse_xml(response.content)
                code, message = _text(root, "Code"), _text(root, "Message")
                request_id = _text(root, "RequestId") or request_id
            except (ET.ParseError, ValueError):
                message = response.text[:200]
        elif response.status_code == 404:
            code = "NotFound"
        hint = _CREDENTIALS_HINT if response.status_code == 403 and not code else ""
        return S3Error(operation, response.status_code, code, message, request_id, hint)

    def _xml(self, operation: str, response: httpx.Response) -> ET.Element:
        try:
            root = parse_xml(response.content)
        except (ET.ParseError, ValueError) as e:
            raise S3Error(operation, response.status_code, "MalformedAnswer", str(e)) from e
        if _local(root.tag) == "Error":  # CompleteMultipartUpload can fail after its 200 status line
            raise S3Error(operation, response.status_code, _text(root, "Code"), _text(root, "Message"),
                          _text(root, "RequestId"))
        return root

    # --- objects --------------------------------------------------------------------------------------------------

    def put_object(self, key: str, body: bytes, *, content_type: str | None = None) -> str:
        """Store ``body`` (whole, in memory: for small objects; see :meth:`upload`) at ``key``; its ETag."""
        _check_key(key)
        headers = {"content-type": content_type} if content_type else {}
        response = self._send(f"PUT {key}", lambda: self._request("PUT", key, body=body, headers=headers))
        return response.headers.get("etag", "")

    def head_object(self, key: str) -> ObjectInfo | None:
        """Size, ETag and date of ``key``, or None when there is no such object."""
        _check_key(key)
        response = self._send(f"HEAD {key}", lambda: self._request("HEAD", key), ok=(200, 404))
        if response.status_code == 404:
            return None
        return ObjectInfo(key, int(response.headers.get("content-length", "0")), response.headers.get("etag", ""),
                          _http_date(response.headers.get("last-modified")))

    def delete_object(self, key: str) -> None:
        """Delete ``key``; deleting what is not there is not an error."""
        _check_key(key)
        self._send(f"DELETE {key}", lambda: self._request("DELETE", key), ok=(200, 204, 404))

    def copy_object(self, source: str, key: str) -> None:
        """Copy the object ``source`` to ``key`` in the same bucket, server-side (S3 copies up to 5 GiB this way)."""
        header = {"x-amz-copy-source": uri_encode(f"/{self.config.bucket}/{_check_key(source)}", keep_slash=True)}
        response = self._send(f"CopyObject {key}", lambda: self._request("PUT", _check_key(key), headers=header))
        self._xml(f"CopyObject {key}", response)  # a copy can fail after its 200 status line

    def get_object(self, key: str, *, start: int | None = None, end: int | None = None,
                   suffix: int | None = None) -> ObjectStream:
        """Stream ``key``, or the bytes ``start``..``end`` of it (inclusive, as HTTP ranges; ``end`` None: to the
        end), or its last ``suffix`` bytes. A range past the end raises the S3 error (InvalidRange, 416)."""
        _check_key(key)
        wanted = _range_header(start, end, suffix)
        headers = {"range": wanted} if wanted else {}
        response = self._send(f"GET {key}", lambda: self._request("GET", key, headers=headers),
                              ok=(200, 206), stream=True)
        try:
            return self._stream(key, response, wanted, start, end, suffix)
        except BaseException:
            response.close()
            raise

    @staticmethod
    def _stream(key: str, response: httpx.Response, wanted: str | None, start: int | None, end: int | None,
                suffix: int | None) -> ObjectStream:
        length = int(response.headers.get("content-length", "-1"))
        if length < 0 and response.status_code == 200:
            raise S3Error(f"GET {key}", 200, "MalformedAnswer", "an object without a Content-Length")
        if response.status_code == 206:
            first, last, total = _content_range(response.headers.get("content-range", ""))
            return ObjectStream(response, last - first + 1, total, first)
        if not wanted:
            return ObjectStream(response, length, length, 0)
        # A 200 to a ranged GET: the server sent everything. Keep the asked part, or refuse as S3 would.
        if suffix is not None:
            first, last = max(0, length - suffix), length - 1
        else:
            first, last = start or 0, min(length - 1, length - 1 if end is None else end)
        if first >= length:
            raise S3Error(f"GET {key}", 416, "InvalidRange", "The requested range is not satisfiable")
        return ObjectStream(response, last - first + 1, length, first, skip=first)

    # --- uploads --------------------------------------------------------------------------------------------------

    def upload(self, key: str, chunks: Iterable[bytes], *, part_size: int = DEFAULT_PART,
               digests: Sequence[str] = ("sha256",), content_type: str | None = None) -> UploadResult:
        """Store the bytes of ``chunks`` at ``key``, hashing them on the way: one PUT when they fit in one part,
        else a multipart upload in parts of ``part_size`` (at least 5 MiB; the last may be smaller). Any failure,
        including one raised by ``chunks``, aborts the multipart upload, so nothing is left in the bucket."""
        _check_key(key)
        if part_size < MIN_PART:
            raise InvalidArgument(f"S3 parts are at least {MIN_PART} bytes (5 MiB), not {part_size}")
        hashers = {name: hashlib.new(name) for name in dict.fromkeys(("sha256", *digests))}
        size = 0
        parts = _parts(chunks, part_size)
        first = next(parts, b"")
        second = next(parts, None)

        def account(part: bytes) -> bytes:
            nonlocal size
            size += len(part)
            for h in hashers.values():
                h.update(part)
            return part

        if second is None:
            etag = self.put_object(key, account(first), content_type=content_type)
            return UploadResult(key, etag, size, {n: h.hexdigest() for n, h in hashers.items()})
        upload_id = self.create_multipart_upload(key, content_type=content_type)
        try:
            etags: list[str] = []
            for number, part in enumerate(itertools.chain((first, second), parts), start=1):
                if number > MAX_PARTS:
                    raise InvalidArgument(f"more than {MAX_PARTS} parts: raise part_size above {part_size}")
                etags.append(self.upload_part(key, upload_id, number, account(part)))
            etag = self.complete_multipart_upload(key, upload_id, etags)
        except BaseException:
            try:
                self.abort_multipart_upload(key, upload_id)
            except S3Error as e:
                log.warning("aborting the multipart upload %s of %s failed: %s", upload_id, key, e)
            raise
        return UploadResult(key, etag, size, {n: h.hexdigest() for n, h in hashers.items()})

    def create_multipart_upload(self, key: str, *, content_type: str | None = None) -> str:
        """Start a multipart upload; its upload id. Not retried (a retry could leave a second upload behind)."""
        _check_key(key)
        headers = {"content-type": content_type} if content_type else {}
        response = self._send(f"CreateMultipartUpload {key}",
                              lambda: self._request("POST", key, query=[("uploads", "")], headers=headers),
                              retry=False)
        upload_id = _text(self._xml("CreateMultipartUpload", response), "UploadId")
        if not upload_id:
            raise S3Error(f"CreateMultipartUpload {key}", response.status_code, "MalformedAnswer", "no UploadId")
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload part ``number`` (1-based); its ETag. Retried: a part upload replaces the same part number.
        Signed UNSIGNED-PAYLOAD (the caller hashes the whole object; TLS protects the bytes in transit)."""
        query = [("partNumber", str(number)), ("uploadId", upload_id)]
        response = self._send(f"UploadPart {key} #{number}", lambda: self._request(
            "PUT", key, query=query, body=body, payload=UNSIGNED_PAYLOAD))
        etag = response.headers.get("etag")
        if not etag:
            raise S3Error(f"UploadPart {key} #{number}", response.status_code, "MalformedAnswer", "no ETag")
        return etag

    def complete_multipart_upload(self, key: str, upload_id: str, etags: Sequence[str]) -> str:
        """Join the parts (``etags[i]`` is part i+1's); the object's ETag. Not retried."""
        body = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, start=1)) + "</CompleteMultipartUpload>").encode()
        response = self._send(f"CompleteMultipartUpload {key}", lambda: self._request(
            "POST", key, query=[("uploadId", upload_id)], body=body, headers={"content-type": "application/xml"}),
            retry=False)
        return _text(self._xml(f"CompleteMultipartUpload {key}", response), "ETag")

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (idempotent: an upload already gone is not an error)."""
        self._send(f"AbortMultipartUpload {key}",
                   lambda: self._request("DELETE", key, query=[("uploadId", upload_id)]), ok=(200, 204, 404))

    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        """The multipart uploads started and neither completed nor aborted, under ``prefix``."""
        query: list[tuple[str, str]] = [("uploads", "")] + ([("prefix", prefix)] if prefix else [])
        while True:
            response = self._send("ListMultipartUploads", partial(self._request, "GET", query=query))
            root = self._xml("ListMultipartUploads", response)
            for item in root:
                if _local(item.tag) == "Upload":
                    yield MultipartUpload(_text(item, "Key"), _text(item, "UploadId"),
                                          _iso_date(_text(item, "Initiated")))
            if _text(root, "IsTruncated") != "true":
                return
            query = [q for q in query if q[0] not in ("key-marker", "upload-id-marker")] + [
                ("key-marker", _text(root, "NextKeyMarker")), ("upload-id-marker", _text(root, "NextUploadIdMarker"))]

    # --- listing and pre-signed URLs ------------------------------------------------------------------------------

    def list_objects(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order (ListObjectsV2, ``page_size`` a request)."""
        if not 1 <= page_size <= 1000:
            raise InvalidArgument(f"an S3 listing page is 1 to 1000 keys, not {page_size}")
        token = ""
        while True:
            query = [("list-type", "2"), ("max-keys", str(page_size))]
            query += [("prefix", prefix)] if prefix else []
            query += [("continuation-token", token)] if token else []
            response = self._send("ListObjectsV2", partial(self._request, "GET", query=query))
            root = self._xml("ListObjectsV2", response)
            for item in root:
                if _local(item.tag) == "Contents":
                    yield ObjectInfo(_text(item, "Key"), int(_text(item, "Size", "0")), _text(item, "ETag"),
                                     _iso_date(_text(item, "LastModified")))
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return

    def presigned_get_url(self, key: str, expires: int) -> str:
        """A URL that fetches ``key`` with no other credentials for ``expires`` seconds (1 to 604800)."""
        _check_key(key)
        try:
            return presign("GET", self.base_url, self.host, self._path(key), self.config.credentials,
                           self.config.region, expires)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` regrouped into pieces of exactly ``size`` bytes (the last: what is left, possibly nothing)."""
    buffer: list[bytes] = []
    held = 0
    for chunk in chunks:
        buffer.append(bytes(chunk))
        held += len(chunk)
        if held >= size:
            data = b"".join(buffer)
            while len(data) >= size:
                yield data[:size]
                data = data[size:]
            buffer, held = [data], len(data)
    if held or not buffer:
        yield b"".join(buffer)


def _content_range(value: str) -> tuple[int, int, int]:
    """``bytes 0-9/443`` as (0, 9, 443)."""
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        if unit != "bytes":
            raise ValueError(unit)
        return int(first), int(last), int(total) if total != "*" else -1
    except ValueError:
        raise S3Error("GET", 206, "MalformedAnswer", f"a 206 answer with Content-Range {value!r}") from None


def _iso_date(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _http_date(text: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime
    try:
        return parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None
