"""gzip for RPC messages: Connect's ``Content-Encoding``/``Accept-Encoding`` and gRPC-Web's ``grpc-encoding``.

A compressed request is inflated with the decompressed size capped at the route's body limit
(``max_request_bytes``), so a small gzip bomb is refused (413, ``resource_exhausted``) after at most
that many bytes, as an uncompressed body of that size would be. An encoding other than gzip or identity
gets ``unimplemented`` naming the supported ones (the Connect and gRPC compression specs).

A response is compressed only when the client accepts gzip and the message has at least
:data:`MIN_BYTES`: a smaller one fits in one TCP segment (MSS ~1.4 KiB) either way, so compressing it
saves no round trip and only costs both sides CPU (and gzip's 18 bytes of framing). Error bodies are
never compressed (connect-go's handlers do the same: "in unary Connect, errors always use application/json").
"""

from __future__ import annotations

import zlib

from ..core.errors import FleetdError, InvalidArgument, PayloadTooLarge

GZIP = "gzip"
IDENTITY = "identity"
SUPPORTED = f"{GZIP}, {IDENTITY}"
MIN_BYTES = 1024
# Level 6 (zlib's default) compresses JSON lists nearly as well as 9 at about half the CPU; 1 is faster but
# leaves ~15% more bytes. Responses here are small (a page of a list), so the CPU is small either way.
LEVEL = 6


class UnsupportedEncoding(FleetdError):
    """A request compressed with something this server does not decode."""

    code = "unimplemented"
    http_status = 501

    def __init__(self, encoding: str, accept_header: str) -> None:
        super().__init__(f"unknown compression {encoding!r}: supported encodings are {SUPPORTED}; "
                         f"send the message uncompressed or with gzip")
        self.headers = {accept_header: SUPPORTED}


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than this endpoint accepts ({limit} bytes) "
                           f"once decompressed")


def compressed(encoding: str, accept_header: str = "Accept-Encoding") -> bool:
    """Whether a Content-Encoding (or grpc-encoding) value means gzip (True) or no compression (False).

    Anything else is :class:`UnsupportedEncoding`, whose answer lists the supported encodings in
    ``accept_header`` (``Accept-Encoding`` for Connect, ``grpc-accept-encoding`` for gRPC-Web)."""
    name = encoding.strip().lower()
    if name == GZIP:
        return True
    if name in ("", IDENTITY):
        return False
    raise UnsupportedEncoding(encoding, accept_header)


def decode(body: bytes, encoding: str, limit: int) -> bytes:
    """A Connect body (or GET message) decompressed per ``encoding``, at most ``limit`` bytes."""
    return gunzip(body, limit) if compressed(encoding) else body


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate gzip ``data`` (one member or several, as RFC 1952 allows), refusing more than ``limit`` bytes.

    zlib's ``max_length`` stops inflating at the cap, so a bomb never costs more than ``limit`` bytes of memory."""
    if not data:
        return data  # an empty message, sent with the header but nothing to inflate
    out: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: a gzip header and trailer, not raw zlib
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise InvalidArgument(f"the request body is not valid gzip ({exc}); send it uncompressed or "
                                  f"compress it with gzip") from None
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        out.append(chunk)
        if not inflater.eof:
            raise InvalidArgument("the request body is truncated gzip: it ends before the gzip trailer")
        data = inflater.unused_data
        if not data:
            return out[0] if len(out) == 1 else b"".join(out)


def accepts_gzip(accept: str | None) -> bool:
    """Whether an Accept-Encoding (or grpc-accept-encoding) value takes gzip: listed, or ``*``, with a weight
    above zero (``gzip;q=0`` refuses it)."""
    if not accept:
        return False
    star = False
    for item in accept.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name in (GZIP, "*"):
            weight = params.replace(" ", "").lower()
            ok = not (weight.startswith("q=") and _zero(weight[2:]))
            if name == GZIP:
                return ok
            star = ok
    return star


def _zero(q: str) -> bool:
    try:
        return float(q) == 0
    except ValueError:
        return False


def gzip(data: bytes) -> bytes:
    """``data`` as one gzip member."""
    deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()
