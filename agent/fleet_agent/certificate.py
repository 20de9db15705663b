"""The device's client certificate from the fleet CA (docs/pki.md): when the server names an MQTT broker (the agent
connects to it with this certificate, docs/mqtt.md) or with ``FLEET_AGENT_CLIENT_CERTIFICATE=1``.

The run loop asks for one after a check-in of an active device, with a CSR for the device's own Ed25519 key, and
asks again (over its current credentials: the same call) once the server's ``renew_after`` (about two thirds of the
lifetime) has passed. The certificate goes to ``client.pem`` in the state dir (its key is ``device.key``), for the
MQTT link and whatever else speaks mutual TLS with it; ``client-cert.json`` keeps its serial and dates.

The CSR is written here, DER by hand, and signed with the device key: cryptography's x509 and serialization
packages would cost the agent ~1.6 MiB of idle RSS for good, for one CSR every few weeks (docs/performance.md).
Ed25519 signatures are deterministic, so the bytes are exactly those of cryptography's
``CertificateSigningRequestBuilder`` (a test holds them equal).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .client import AgentError
from .config import Paths, atomic_write, read_json, write_json
from .identity import public_key_b64, public_key_raw

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 3600.0


_ED25519 = b"\x06\x03\x2b\x65\x70"  # OBJECT IDENTIFIER 1.3.101.112 (RFC 8410)
_COMMON_NAME = b"\x06\x03\x55\x04\x03"  # OBJECT IDENTIFIER 2.5.4.3
_SEQUENCE, _SET, _BIT_STRING, _UTF8_STRING = 0x30, 0x31, 0x03, 0x0C


def _der(tag: int, *content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    body = b"".join(content)
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def make_csr(key: Ed25519PrivateKey, cn: str) -> str:
    """A PKCS#10 request (RFC 2986) for ``key`` with subject CN=``cn`` and no attributes, PEM."""
    algorithm = _der(_SEQUENCE, _ED25519)
    subject = _der(_SEQUENCE, _der(_SET, _der(_SEQUENCE, _COMMON_NAME, _der(_UTF8_STRING, cn.encode()))))
    spki = _der(_SEQUENCE, algorithm, _der(_BIT_STRING, b"\x00", public_key_raw(key)))
    info = _der(_SEQUENCE, b"\x02\x01\x00", subject, spki, b"\xa0\x00")  # version 0; attributes [0] empty
    der = _der(_SEQUENCE, info, algorithm, _der(_BIT_STRING, b"\x00", key.sign(info)))
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "\n".join(["-----BEGIN CERTIFICATE REQUEST-----", *lines, "-----END CERTIFICATE REQUEST-----", ""])


class ClientCertificate:
    def __init__(self, paths: Paths, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.paths, self.client, self.clock = paths, client, clock
        self.meta = read_json(self.meta_path) or {}
        self._retry_at = 0.0

    @property
    def cert_path(self) -> Any:
        return self.paths.root / "client.pem"

    @property
    def meta_path(self) -> Any:
        return self.paths.root / "client-cert.json"

    def _holder(self) -> dict[str, str]:
        """Whom a certificate is for: this device id and key (after a re-key or a new enrolment, a new one is due)."""
        return {"device_id": str(self.client.device_id), "key": public_key_b64(self.client.key)}

    def due(self) -> bool:
        now = self.clock()
        if now < self._retry_at:
            return False
        if not self.cert_path.exists() or now >= float(self.meta.get("renew_after") or 0):
            return True
        return any(self.meta.get(k) != v for k, v in self._holder().items())

    def renew_if_due(self) -> bool:
        """Ask for a certificate when there is none or it is due; True when a new one was saved. A failure is
        logged and tried again an hour later (the current certificate, if any, stays)."""
        if not self.due():
            return False
        try:
            answer = self.client.call("IssueCertificate", {"csr": make_csr(self.client.key, self.client.device_id)})
        except AgentError as e:
            self._retry_at = self.clock() + min(RETRY_AFTER_FAILURE, float(e.retry_after or RETRY_AFTER_FAILURE))
            log.warning("could not get a client certificate (trying again later): %s", e)
            return False
        atomic_write(self.cert_path, str(answer["certificate"]).encode(), 0o644)
        self.meta = {"serial": answer["serial"], "not_after": answer["not_after"],
                     "renew_after": answer["renew_after"], **self._holder()}
        write_json(self.meta_path, self.meta)
        log.info("client certificate %s saved to %s (renewed after %s)", answer["serial"], self.cert_path,
                 time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(answer["renew_after"])))
        return True
