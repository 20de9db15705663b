"""A small Connect client for the CLI (and for tests and scripts)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.errors import FleetdError

if TYPE_CHECKING:
    import httpx  # imported where used: `fleetd serve` loads this module but never makes a request

DEFAULT_SERVER = "https://127.0.0.1:8420"


class RemoteError(FleetdError):
    """An error answer from the server, carrying its Connect code and HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def resolve_ca(ca: str | None, data_dir: str | None) -> str | None:
    """--ca, else $FLEETD_CA, else the local data dir's ca.pem if there is one."""
    ca = ca or os.environ.get("FLEETD_CA")
    if ca:
        return ca
    d = Path(data_dir or os.environ.get("FLEETD_DATA_DIR") or "./fleetd-data").expanduser()
    if (d / "ca.pem").is_file():
        return str(d / "ca.pem")
    return None


class Client:
    def __init__(self, server: str, api_key: str | None = None, ca_file: str | Path | None = None,
                 timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http: httpx.Client = httpx.Client(base_url=self.server, headers=headers, timeout=timeout,
                                 verify=ssl_context(ca_file) if self.server.startswith("https") else True)

    def call(self, service: str, method: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            r = self.http.post(f"/fleetd.v1.{service}/{method}", content=msgspec.json.encode(body or {}),
                               headers={"Content-Type": "application/json"})
        except httpx.ConnectError as e:
            raise RemoteError("unavailable", f"cannot reach {self.server}: {e}. Is 'fleetd serve' running, "
                              "and are --server and --ca right?", 503) from None
        except httpx.HTTPError as e:
            raise RemoteError("unavailable", f"request to {self.server} failed: {e}", 503) from None
        if r.status_code != 200:
            try:
                err = r.json()
                raise RemoteError(err.get("code", "unknown"), err.get("message", r.text), r.status_code)
            except ValueError:
                raise RemoteError("unknown", f"HTTP {r.status_code}: {r.text[:200]}", r.status_code) from None
        return r.json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
