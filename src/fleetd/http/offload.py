"""Blob downloads sent by nginx: ``download_offload = "x-accel"`` (docs/operations.md, "Downloads through nginx").

fleetd decides as always (authentication, who may have which blob, 404 for an unknown or corrupt one,
``If-None-Match``), then answers with ``X-Accel-Redirect: <download_offload_location>/<sha[:2]>/<sha256>``
and no body; nginx serves that file from an ``internal`` location (sendfile, kTLS where it has them), and
applies ``Range`` and ``If-Range`` to it itself. Imported only when the setting is on.
"""

from __future__ import annotations

from typing import Any

from litestar import Response

from ..core.config import Settings
from ..store.blobs import relative_path

X_ACCEL_REDIRECT = "X-Accel-Redirect"


def x_accel_response(settings: Settings, sha: str, headers: dict[str, str], media_type: str) -> Response[Any]:
    """The answer to an authorized ``GET`` of blob ``sha`` when nginx sends the bytes.

    Of these headers nginx keeps Cache-Control and Content-Disposition, and the Content-Type; ETag and the
    security headers come back through ``add_header ... $upstream_http_...`` in its internal location, and it
    sets Content-Length, Accept-Ranges and Content-Range for the file it sends.
    """
    kept = {k: v for k, v in headers.items() if k != "Accept-Ranges"}
    kept[X_ACCEL_REDIRECT] = f"{settings.download_offload_location}/{relative_path(sha)}"
    return Response(b"", status_code=200, headers=kept, media_type=media_type)


__all__ = ["X_ACCEL_REDIRECT", "x_accel_response"]
