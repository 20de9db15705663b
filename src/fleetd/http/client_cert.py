"""The client certificate a TLS-terminating proxy verified and forwards in a header (docs/pki.md, "Client
certificates through a proxy"; docs/decisions.md).

Outermost of the server's ASGI stack when ``client_cert_header`` is set (never otherwise: nothing to pay when it is
off). It looks at the TCP peer before anything rewrites it: uvicorn's forwarding-header middleware replaces the
client address with X-Forwarded-For's, so it runs inside this one here, not in uvicorn. The header is always
removed from the request; only from a peer in ``client_cert_proxies`` is its value kept, in the scope key
:data:`SCOPE_KEY`, where the auth guard finds it (devices/certificate_service.py checks it).
"""

from __future__ import annotations

import ipaddress
from typing import Any

SCOPE_KEY = "fleetd.client_cert"  # app.CLIENT_CERT_KEY


class ClientCertHeader:
    def __init__(self, app: Any, header: str, proxies: list[str], trusted_proxies: list[str]) -> None:
        if trusted_proxies:
            from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

            app = ProxyHeadersMiddleware(app, trusted_hosts=trusted_proxies)
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.networks = [ipaddress.ip_network(p) for p in proxies]

    def _from_proxy(self, client: Any) -> bool:
        if not client:
            return False
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(addr in n for n in self.networks)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(name == self.header for name, _ in headers):
                value = b"".join(v for n, v in headers if n == self.header).strip()
                scope = {**scope, "headers": [(n, v) for n, v in headers if n != self.header]}
                if value and self._from_proxy(scope.get("client")):
                    scope[SCOPE_KEY] = value
        await self.app(scope, receive, send)


def with_client_certificates(app: Any, settings: Any) -> Any:
    """``app`` behind :class:`ClientCertHeader` when client certificates come through a proxy, else as it is."""
    if not settings.client_cert_header:
        return app
    return ClientCertHeader(app, settings.client_cert_header, settings.client_cert_proxies,
                            settings.trusted_proxies)
