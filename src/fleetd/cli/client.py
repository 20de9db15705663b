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
    """An error answer from the server, carrying its Connect code and HTTP status (and what to do, if known)."""

    def __init__(self, code: str, message: str, status: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = status
        self.hint = hint


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def _default_ca(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("FLEETD_DATA_DIR") or "./fleetd-data").expanduser() / "ca.pem"


def resolve_ca(ca: str | None, data_dir: str | None) -> str | None:
    """--ca, else $FLEETD_CA, else the local data dir's ca.pem if there is one."""
    ca = ca or os.environ.get("FLEETD_CA")
    if ca:
        return ca
    path = _default_ca(data_dir)
    return str(path) if path.is_file() else None


def _checkout_ca() -> Path | None:
    """The ca.pem of `make serve`'s data dir, when this fleetd runs from a source checkout that has one."""
    root = Path(__file__).resolve().parents[3]
    path = root / "fleetd-data" / "ca.pem"
    return path if (root / "pyproject.toml").is_file() and path.is_file() else None


def tls_failure(server: str, ca_file: str | Path | None, reason: str) -> RemoteError:
    """The server's certificate did not verify: say where the CLI looked for the fleet CA and how to get it."""
    if ca_file is None:
        message = (f"cannot verify {server}'s certificate: the CLI has no fleet CA to trust it by (it takes --ca "
                   f"FILE, else $FLEETD_CA, else the data dir's ca.pem, here {_default_ca(None).absolute()}, "
                   "which does not exist)")
    else:
        message = (f"cannot verify {server}'s certificate with the CA in {ca_file} ({reason}): it is another "
                   "fleet's CA, or the server's certificate does not name the host in the URL")
    checkout = _checkout_ca()
    where = (f"e.g. {checkout}, the data dir of make serve" if checkout is not None and str(checkout) != ca_file
             else "'fleetd serve' prints its data dir at start")
    hint = (f"The server's CA is ca.pem in its data dir ({where}): export FLEETD_CA=/path/to/ca.pem (or pass "
            f"--ca), or fetch it and compare its fingerprint with the one 'fleetd serve' printed: fleetd ca fetch "
            f"--server {server}")
    return RemoteError("unavailable", message, 503, hint)


def _cert_error(e: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Client:
    def __init__(self, server: str, api_key: str | None = None, ca_file: str | Path | None = None,
                 timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.ca_file = ca_file
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
            bad_cert = _cert_error(e)
            if bad_cert is not None:
                raise tls_failure(self.server, self.ca_file, bad_cert.verify_message or str(bad_cert)) from None
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
