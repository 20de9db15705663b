"""Talking to the server: Connect JSON calls over HTTPS that trusts only the pinned fleet CA.

Errors are :class:`AgentError` with the server's Connect code; ``transient``
says whether trying again later may help (network errors, 429, 5xx).
``GET /v1/ca.pem`` is the one request made without verification, and what it
returns is accepted only when its SHA-256 is the fingerprint a join token pins
(or, without a token, on first use).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

# httpx's optional command-line entry point imports rich, click and pygments when they are installed (about
# 6 MiB of resident memory); the agent never uses it, and httpx falls back cleanly when it cannot be imported.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import __version__
from .identity import challenge_message

log = logging.getLogger(__name__)

SERVICE_PATH = "/fleetd.v1.DeviceService/"
# Re-authenticate this long before the bearer token runs out.
REAUTH_MARGIN = 60.0
TRANSIENT_CODES = frozenset({"unavailable", "resource_exhausted", "internal", "unknown", "deadline_exceeded",
                             "aborted"})
TRANSIENT_HTTP = frozenset({429, 500, 502, 503, 504})
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class AgentError(Exception):
    """A failed call (or no answer at all), with its Connect code."""

    def __init__(self, code: str, message: str, transient: bool = False, *, http_status: int = 0,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class UnknownDevice(AgentError):
    """The server does not know this device id (deleted, rejected, or another server): enroll again."""


class KeyMismatch(UnknownDevice):
    """The server knows this device id with another key: this device lost its key (docs/protocol.md §5)."""


# Authenticate's 401 message when the signature is not by the device's enrolled key (src/fleetd/api/device.py).
KEY_MISMATCH = "the signature does not match this device's key"


@dataclass(frozen=True)
class JoinToken:
    token: str
    ca_fingerprint: str


def parse_join_token(token: str) -> JoinToken:
    """Read the CA fingerprint out of ``fdj1.<fingerprint>.<id>.<secret>`` (docs/protocol.md §4)."""
    t = token.strip()
    parts = t.split(".")
    if len(parts) != 4 or parts[0] != "fdj1":
        raise AgentError("invalid_argument", "a join token looks like fdj1.<CA fingerprint>.<id>.<secret>; copy "
                         "it whole from 'fleetd tokens create'")
    if not FINGERPRINT.fullmatch(parts[1]) or not re.fullmatch(r"[0-9a-f]{12}", parts[2]) \
            or not re.fullmatch(r"[0-9a-f]{32}", parts[3]):
        raise AgentError("invalid_argument", "the join token is malformed (lowercase hex parts of 64, 12 and 32 "
                         "digits); copy it whole from 'fleetd tokens create'")
    return JoinToken(t, parts[1])


def ca_fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER, lowercase hex."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError:
        raise AgentError("invalid_argument", "not a PEM certificate") from None
    return hashlib.sha256(der).hexdigest()


def same_fingerprint(a: str, b: str) -> bool:
    return hmac.compare_digest(a.lower().encode(), b.lower().encode())


def check_base_url(url: str) -> str:
    u = url.strip().rstrip("/")
    if not u.startswith("https://"):
        raise AgentError("invalid_argument", f"server URL {url!r} must start with https:// (the agent speaks "
                         "only TLS pinned to the fleet CA; behind a proxy, give the proxy's https:// URL)")
    if not httpx.URL(u).host:
        raise AgentError("invalid_argument", f"server URL {url!r} has no host name")
    return u


def fetch_ca_unverified(base_url: str, timeout: float = 10.0) -> str:
    """``GET /v1/ca.pem`` without verifying anything: the caller must check the fingerprint."""
    url = base_url.rstrip("/") + "/v1/ca.pem"
    try:
        r = httpx.get(url, verify=False, timeout=timeout)  # trusted only by the caller's hash check
    except httpx.HTTPError as e:
        raise AgentError("unavailable", f"cannot fetch the fleet CA from {url}: {e or type(e).__name__}",
                         transient=True) from None
    if r.status_code != 200:
        raise AgentError("unavailable", f"GET {url} answered HTTP {r.status_code}", transient=True,
                         http_status=r.status_code)
    try:
        ca_fingerprint(r.text)
    except AgentError:
        raise AgentError("invalid_argument", f"{url} did not return a PEM certificate; is this a fleetd "
                         "server?") from None
    return r.text


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """TLS that trusts only the fleet CA (never the system store) and checks host names as usual."""
    return ssl.create_default_context(cadata=ca_pem)  # with cadata, the system store is not loaded


def _error_from(r: httpx.Response) -> AgentError:
    retry_after = None
    if "retry-after" in r.headers:
        try:
            retry_after = max(0.0, float(r.headers["retry-after"]))
        except ValueError:
            retry_after = None
    try:
        body = r.json()
        code, message = str(body.get("code") or "unknown"), str(body.get("message") or "")
    except (ValueError, AttributeError):
        code = "unavailable" if r.status_code in (502, 503, 504) else "unknown"
        message = f"HTTP {r.status_code}: {r.text[:200]}"
    transient = r.status_code in TRANSIENT_HTTP or (r.status_code >= 500 and code in TRANSIENT_CODES)
    return AgentError(code, message or f"HTTP {r.status_code}", transient, http_status=r.status_code,
                      retry_after=retry_after)


class ServerClient:
    """One device talking to one server. Thread-safe: the run loop and the executor share it."""

    def __init__(self, base_url: str, ca_pem: str, key: Ed25519PrivateKey, device_id: str = "", *,
                 timeout: float = 30.0) -> None:
        self.base_url = check_base_url(base_url)
        self.key = key
        self.device_id = device_id
        self.status = ""
        self.http = httpx.Client(verify=pinned_context(ca_pem), timeout=httpx.Timeout(timeout, connect=10.0),
                                 headers={"User-Agent": f"fleet-agent/{__version__}"})
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # --- authentication ------------------------------------------------------------
    def authenticate(self) -> None:
        """Sign a fresh challenge and take the bearer token it buys (docs/protocol.md §6)."""
        if not self.device_id:
            raise AgentError("failed_precondition", "this device has not enrolled yet")
        try:
            ch = self._post("GetChallenge", {"device_id": self.device_id}, None)
        except AgentError as e:
            if e.http_status == 401:
                raise UnknownDevice(e.code, f"the server does not know device {self.device_id} ({e.message})",
                                    http_status=401) from None
            raise
        nonce = str(ch.get("nonce", ""))
        sig = self.key.sign(challenge_message(self.device_id, nonce))
        try:
            resp = self._post("Authenticate", {"device_id": self.device_id, "nonce": nonce,
                                               "signature": base64.b64encode(sig).decode()}, None)
        except AgentError as e:
            if e.http_status == 401 and e.message == KEY_MISMATCH:
                raise KeyMismatch(e.code, e.message, http_status=401) from None
            raise
        self._token = str(resp.get("token", ""))
        self._expires = time.monotonic() + float(resp.get("expires_in") or 0)
        self.status = str(resp.get("status", ""))
        if not self._token:
            raise AgentError("internal", "the server's Authenticate answer holds no token", True)

    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <device token>"}``, authenticating first if needed."""
        with self._lock:
            if not self._token or time.monotonic() >= self._expires - REAUTH_MARGIN:
                self._token = ""
                self.authenticate()
            return {"Authorization": f"Bearer {self._token}"}

    def forget_token(self, token: str | None = None) -> None:
        with self._lock:
            if token is None or self._token == token:
                self._token = ""

    # --- calls ----------------------------------------------------------------------
    def call(self, method: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        """``DeviceService.<method>``; re-authenticates once on 401. Raises AgentError."""
        if not auth:
            return self._post(method, body, None)
        for attempt in (0, 1):
            headers = self.auth_headers()
            try:
                return self._post(method, body, headers)
            except AgentError as e:
                if e.http_status == 401 and attempt == 0:
                    # Expired early, or the server restarted with a new key epoch: one fresh token, one retry.
                    self.forget_token(headers["Authorization"][len("Bearer "):])
                    continue
                raise
        raise AssertionError("unreachable")

    def _post(self, method: str, body: dict[str, Any], headers: dict[str, str] | None) -> dict[str, Any]:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        url = self.base_url + SERVICE_PATH + method
        try:
            r = self.http.post(url, content=json.dumps(body, separators=(",", ":")).encode(), headers=h)
        except httpx.HTTPError as e:
            raise AgentError("unavailable", f"cannot reach {self.base_url}: {type(e).__name__}: {e}",
                             transient=True) from None
        if r.status_code != 200:
            raise _error_from(r)
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AgentError("internal", f"the server's {method} answer is not a JSON object", True,
                             http_status=r.status_code)
        return data

    # --- the device calls (thin; the run loop and enrollment use them) ---------------
    def enroll(self, *, hardware_id: str, device_type: str, public_key: str, token: str = "", name: str = "",
               inventory: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"hardware_id": hardware_id, "device_type": device_type, "public_key": public_key,
                                "token": token, "name": name}
        if inventory is not None:
            body["inventory"] = inventory
        resp = self.call("Enroll", body, auth=False)
        self.device_id = str(resp.get("device_id", ""))
        self.status = str(resp.get("status", ""))
        self.forget_token()
        return resp


__all__ = ["AgentError", "JoinToken", "KeyMismatch", "ServerClient", "UnknownDevice", "ca_fingerprint",
           "check_base_url", "fetch_ca_unverified", "parse_join_token", "pinned_context", "same_fingerprint"]
