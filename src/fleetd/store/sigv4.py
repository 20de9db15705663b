"""AWS Signature Version 4 for S3: signed headers and pre-signed (query-string) URLs.

What S3 wants, from the S3 API reference ("Authenticating Requests (AWS Signature Version 4)"):

- the canonical URI is the path with each segment URI-encoded once (``/`` kept; S3 does not normalise ``.`` or
  ``//``), the canonical query is every parameter encoded and sorted (a parameter without a value is ``name=``);
- every request carries ``x-amz-content-sha256``: the payload's hex SHA-256, or ``UNSIGNED-PAYLOAD`` when the body
  is streamed and not hashed first; a pre-signed URL always signs ``UNSIGNED-PAYLOAD`` and only the ``host`` header;
- temporary credentials add ``x-amz-security-token`` (a header, or ``X-Amz-Security-Token`` in a pre-signed URL).

tests/store/test_s3_client.py reproduces the worked examples of the S3 documentation exactly.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # 604800: S3 refuses a longer X-Amz-Expires


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but ``A-Za-z0-9-_.~`` (and ``/`` in a path) as %XX of its
    UTF-8 bytes, with upper-case hex."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """``a=1&b=`` : names and values encoded, then sorted (by name, then value)."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in params))


def _stamp(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _signature(credentials: Credentials, stamp: str, region: str, service: str, canonical: str) -> tuple[str, str]:
    """(credential scope, hex signature) of one canonical request."""
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + credentials.secret_key).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    return scope, _hmac(key, to_sign).hex()


def sign_headers(method: str, host: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str],
                 payload_sha256: str, credentials: Credentials, region: str, *, now: datetime | None = None,
                 service: str = "s3") -> dict[str, str]:
    """The headers to send: ``headers`` (all signed) plus host, x-amz-date, x-amz-content-sha256, the session token
    if any, and authorization. ``path`` is the decoded path (``/bucket/my key``): it is encoded here, and the URL
    sent must encode it the same way (:func:`uri_encode` with ``keep_slash``)."""
    stamp = _stamp(now)
    signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical = "\n".join([method.upper(), uri_encode(path, keep_slash=True) or "/", canonical_query(query),
                           "".join(f"{k}:{signed[k]}\n" for k in names), ";".join(names), payload_sha256])
    scope, signature = _signature(credentials, stamp, region, service, canonical)
    signed["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                               f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return signed


def presign(method: str, base_url: str, host: str, path: str, credentials: Credentials, region: str, expires: int,
            *, query: Iterable[tuple[str, str]] = (), now: datetime | None = None, service: str = "s3") -> str:
    """A URL (``base_url`` is ``scheme://host``) that anyone may use for ``expires`` seconds from ``now``, with no
    other credentials: the signature is in its query and covers the method, path, query and host only."""
    if not 1 <= expires <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"a pre-signed URL lives 1 to {MAX_PRESIGN_SECONDS} seconds (7 days), not {expires}")
    stamp = _stamp(now)
    params = [*query, ("X-Amz-Algorithm", ALGORITHM),
              ("X-Amz-Credential", f"{credentials.access_key}/{stamp[:8]}/{region}/{service}/aws4_request"),
              ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)), ("X-Amz-SignedHeaders", "host")]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", credentials.session_token))
    encoded_path = uri_encode(path, keep_slash=True) or "/"
    query_text = canonical_query(params)
    canonical = "\n".join([method.upper(), encoded_path, query_text, f"host:{host}\n", "host", UNSIGNED_PAYLOAD])
    _, signature = _signature(credentials, stamp, region, service, canonical)
    return f"{base_url}{encoded_path}?{query_text}&X-Amz-Signature={signature}"
