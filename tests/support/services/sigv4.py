"""Signing a test request given as a URL, with fleetd's own SigV4 signer (fleetd.store.sigv4)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from urllib.parse import parse_qsl, unquote, urlsplit

from fleetd.store.sigv4 import Credentials, sign_headers


def sign(method: str, url: str, *, region: str, access_key: str, secret_key: str, body: bytes = b"",
         headers: dict[str, str] | None = None, now: datetime | None = None) -> dict[str, str]:
    """The headers to send with the request: ``headers`` plus host, x-amz-date, x-amz-content-sha256 and
    authorization. ``url``'s path and query must be percent-encoded as SigV4 encodes them (S3Server.request does)."""
    parts = urlsplit(url)
    return sign_headers(method, parts.netloc, unquote(parts.path) or "/",
                        parse_qsl(parts.query, keep_blank_values=True), headers or {},
                        hashlib.sha256(body).hexdigest(), Credentials(access_key, secret_key), region, now=now)
