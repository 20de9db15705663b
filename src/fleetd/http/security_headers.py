"""Security headers: the browser's rules for the web UI, and two cheap ones on every response.

The web UI's files get a Content-Security-Policy that allows only its own scripts, styles and requests
(it has no inline script or style; QR codes and charts are drawn by its own code), no framing
(``frame-ancestors``, and ``X-Frame-Options`` for older browsers) and no Referer. Every response gets
``X-Content-Type-Options: nosniff`` and, when the server speaks TLS, ``Strict-Transport-Security``.
The header lists are built once; adding them costs a list copy per response.
"""

from __future__ import annotations

from typing import Any

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
UI_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
# No includeSubDomains: other services on subdomains of the fleet's name may not speak HTTPS.
HSTS = "max-age=31536000"


def response_headers(tls: bool) -> list[tuple[bytes, bytes]]:
    """nosniff, and HSTS with TLS, as ASGI header pairs."""
    extra = [(b"x-content-type-options", b"nosniff")]
    if tls:
        extra.append((b"strict-transport-security", HSTS.encode()))
    return extra


def every_response(tls: bool) -> Any:
    """A Litestar ``before_send`` hook adding :func:`response_headers` to every response."""
    extra = response_headers(tls)

    async def add_headers(message: Any, scope: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]

    return add_headers


async def ui_headers(response: Any) -> Any:
    """An ``after_request`` hook for the web UI's router."""
    response.headers.update(UI_HEADERS)
    return response


__all__ = ["CSP", "HSTS", "UI_HEADERS", "every_response", "response_headers", "ui_headers"]
