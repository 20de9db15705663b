"""The device's client certificate from the fleet CA (docs/pki.md): when the server names an MQTT broker (the agent
connects to it with this certificate, docs/mqtt.md) or with ``FLEET_AGENT_CLIENT_CERTIFICATE=1``.

The run loop asks for one after a check-in of an active device, with a CSR for the device's own Ed25519 key, and
asks again (over its current credentials: the same call) once the server's ``renew_after`` (about two thirds of the
lifetime) has passed. The certificate goes to ``client.pem`` in the state dir (its key is ``device.key``), for the
MQTT link and whatever else speaks mutual TLS with it; ``client-cert.json`` keeps its serial and dates. Without
either, cryptography's x509 is never imported (only here).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .client import AgentError
from .config import Paths, atomic_write, read_json, write_json
from .identity import public_key_b64

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 3600.0


def make_csr(key: Ed25519PrivateKey, cn: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


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
