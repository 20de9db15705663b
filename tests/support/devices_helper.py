"""A minimal device for in-process tests: key pair, enroll, authenticate, call."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetd.devices.devauth import challenge_message


class TestDevice:
    __test__ = False

    def __init__(self, client: Any, hardware_id: str | None = None, device_type: str = "sim") -> None:
        self.client = client
        self.hardware_id = hardware_id or f"hw-{secrets.token_hex(4)}"
        self.device_type = device_type
        self.key = Ed25519PrivateKey.generate()
        self.device_id = ""
        self.token = ""

    @property
    def public_key_b64(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def call(self, method: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url, content = f"/fleetd.v1.DeviceService/{method}", json.dumps(body or {})
        try:
            return self.client.post(url, content=content, headers=headers)
        except httpx.RemoteProtocolError:
            # The server closed an idle keep-alive connection just as this request went out (uvicorn's
            # keep-alive timeout is 5 s): the request never reached it, so sending it again is safe.
            return self.client.post(url, content=content, headers=headers)

    def enroll(self, token: str = "", **extra: Any) -> Any:
        r = self.call("Enroll", {"hardware_id": self.hardware_id, "device_type": self.device_type,
                                 "public_key": self.public_key_b64, "token": token, **extra}, auth=False)
        if r.status_code == 200:
            self.device_id = r.json()["device_id"]
        return r

    def authenticate(self) -> Any:
        nonce = self.call("GetChallenge", {"device_id": self.device_id}, auth=False).json()["nonce"]
        sig = base64.b64encode(self.key.sign(challenge_message(self.device_id, nonce))).decode()
        r = self.call("Authenticate", {"device_id": self.device_id, "nonce": nonce, "signature": sig}, auth=False)
        if r.status_code == 200:
            self.token = r.json()["token"]
        return r
