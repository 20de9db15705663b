"""The HTTP side of the metrics: the request-counting ASGI middleware and the exposition's content type.

The registry itself (core/metrics.py) knows no HTTP; it is fed by :func:`middleware`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.metrics import Metrics

# Litestar appends "; charset=utf-8" to text/* types itself.
CONTENT_TYPE = "text/plain; version=0.0.4"

# Label value for a request Litestar answered without a route template (should not happen).
UNMATCHED_ROUTE = "<unmatched>"


def middleware(metrics: Metrics) -> Callable[[Any], Any]:
    """A Litestar middleware factory counting every request into ``metrics``:
    ``Litestar(middleware=[middleware(fleet.metrics)])``."""

    def factory(app: Any) -> Any:
        observe = metrics.observe
        perf_counter = time.perf_counter

        async def metrics_middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500  # if the app raises before answering

            async def send_and_note(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            start = perf_counter()
            try:
                await app(scope, receive, send_and_note)
            finally:
                observe(scope.get("path_template") or UNMATCHED_ROUTE, scope["method"], status,
                        perf_counter() - start)

        return metrics_middleware

    return factory
