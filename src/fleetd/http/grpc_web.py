"""gRPC-Web framing over HTTP/1.1: what browsers and ``buf curl --protocol grpcweb`` speak.

A gRPC-Web unary call is a POST with Content-Type ``application/grpc-web`` (= ``+proto``) or
``application/grpc-web+json`` whose body is one length-prefixed message: a flag byte (0x01 = the message
is compressed with the ``grpc-encoding`` header's algorithm), a 4-byte big-endian length, the message.
The answer is HTTP 200 with one message frame, then a trailer frame (flag 0x80) whose payload is
HTTP/1-style header lines: ``grpc-status`` (0 = OK) and ``grpc-message`` (percent-encoded).
An error is "trailers-only": HTTP 200, no body, ``grpc-status``/``grpc-message`` in the HTTP headers,
as connect-go's handler answers it and its client (``buf curl``), connect-es and grpc-web read it.
References: github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md and PROTOCOL-HTTP2.md.

This module is the framing and the status mapping only; http/rpc.py runs the method.
"""

from __future__ import annotations

import struct

from ..core.errors import FleetdError, InvalidArgument
from . import compression

GRPC_WEB = "application/grpc-web"
GRPC_WEB_PROTO = "application/grpc-web+proto"
GRPC_WEB_JSON = "application/grpc-web+json"
CONTENT_TYPES = (GRPC_WEB, GRPC_WEB_PROTO, GRPC_WEB_JSON)
ACCEPT_ENCODING = "grpc-accept-encoding"

COMPRESSED = 0x01
TRAILER = 0x80
_PREFIX = struct.Struct(">BI")

# Connect codes and their gRPC status numbers (they are the same list; the Connect spec names them).
STATUS = {"ok": 0, "canceled": 1, "unknown": 2, "invalid_argument": 3, "deadline_exceeded": 4, "not_found": 5,
          "already_exists": 6, "permission_denied": 7, "resource_exhausted": 8, "failed_precondition": 9,
          "aborted": 10, "out_of_range": 11, "unimplemented": 12, "internal": 13, "unavailable": 14,
          "data_loss": 15, "unauthenticated": 16}


def media_type(content_type: str | None) -> str | None:
    """The gRPC-Web media type of a Content-Type header (lower case, without parameters), or None."""
    if content_type is None:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media if media in CONTENT_TYPES else None


class ProtocolError(FleetdError):
    """A gRPC-Web body that breaks the framing rules in a way only a broken client produces (gRPC: INTERNAL)."""


def frame(message: bytes, flags: int = 0) -> bytes:
    return _PREFIX.pack(flags, len(message)) + message


def frames(body: bytes) -> list[tuple[int, bytes]]:
    """Every (flags, payload) frame of ``body``; InvalidArgument if it does not split into whole frames."""
    out = []
    at = 0
    while at < len(body):
        if len(body) - at < _PREFIX.size:
            raise InvalidArgument(f"malformed gRPC-Web body: {len(body) - at} bytes left at offset {at}, "
                                  f"less than a 5-byte frame prefix (flag byte, 4-byte big-endian length)")
        flags, length = _PREFIX.unpack_from(body, at)
        at += _PREFIX.size
        if len(body) - at < length:
            raise InvalidArgument(f"malformed gRPC-Web body: a frame promises {length} bytes, "
                                  f"only {len(body) - at} follow")
        out.append((flags, body[at:at + length]))
        at += length
    return out


def request_message(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The one message of a unary gRPC-Web request body, decompressed if its frame says so."""
    found = frames(body)
    if len(found) != 1:
        raise InvalidArgument(f"a unary gRPC-Web request carries exactly one message frame, this one has "
                              f"{len(found)}")
    flags, message = found[0]
    if flags & ~COMPRESSED:
        raise InvalidArgument(f"malformed gRPC-Web request: frame flags 0x{flags:02x}; a request message "
                              f"frame has 0x00 or 0x01 (compressed)")
    # An unknown grpc-encoding is refused even when this message is not compressed.
    gzipped = encoding is not None and compression.compressed(encoding, ACCEPT_ENCODING)
    if not flags & COMPRESSED:
        return message
    if not gzipped:
        raise ProtocolError("the gRPC-Web message frame is flagged compressed but the request has no "
                            "grpc-encoding header; send grpc-encoding: gzip or an uncompressed frame")
    return compression.gunzip(message, limit)


def percent_encode(text: str) -> str:
    """``grpc-message`` encoding: UTF-8 bytes outside printable ASCII, and ``%``, as %XX."""
    raw = text.encode()
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return text
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)


def status_lines(code: str, message: str) -> dict[str, str]:
    """The grpc-status and grpc-message of a Connect error code and message."""
    return {"grpc-status": str(STATUS.get(code, STATUS["unknown"])), "grpc-message": percent_encode(message)}


def trailer(fields: dict[str, str]) -> bytes:
    """A trailer frame carrying ``fields`` as ``name: value`` lines."""
    return frame("".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("ascii"), TRAILER)


OK_TRAILER = trailer({"grpc-status": "0", "grpc-message": ""})


def response_body(message: bytes, accept: str | None) -> tuple[bytes, dict[str, str]]:
    """A success answer's body (the message frame, gzip when accepted and worth it, then the OK trailer)
    and the headers it needs."""
    if len(message) >= compression.MIN_BYTES and compression.accepts_gzip(accept):
        return (frame(compression.gzip(message), COMPRESSED) + OK_TRAILER,
                {"grpc-encoding": compression.GZIP, ACCEPT_ENCODING: compression.SUPPORTED})
    return frame(message) + OK_TRAILER, {ACCEPT_ENCODING: compression.SUPPORTED}
