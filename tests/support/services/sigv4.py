"""AWS Signature Version 4 for the S3 test helper (no S3 client library is a dependency yet).

Signs the headers of one request: the payload's SHA-256 goes in ``x-amz-content-sha256``, as S3 requires.
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(method: str, url: str, *, region: str, access_key: str, secret_key: str, body: bytes = b"",
         headers: dict[str, str] | None = None, service: str = "s3", now: datetime | None = None) -> dict[str, str]:
    """The headers to send with the request: ``headers`` plus host, x-amz-date, x-amz-content-sha256 and
    authorization. ``url`` is signed as given: percent-encode its path and query as they will be sent
    (S3Server.request does)."""
    parts = urlsplit(url)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    signed = {k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()}
    signed.update({"host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload})
    names = sorted(signed)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
    canonical = "\n".join([method.upper(), parts.path or "/", query,
                           "".join(f"{k}:{signed[k]}\n" for k in names), ";".join(names), payload])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = _hmac(key, to_sign).hex()
    signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                               f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return signed
