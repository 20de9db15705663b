"""Enrollment: make or keep the key, find the server, pin its CA, Enroll, store state.json.

Trust comes from the join token's CA fingerprint: the CA is fetched without
verification and accepted only if its SHA-256 matches, and from then on it is
the only trust anchor. Without a token the first CA seen is trusted (TOFU) and
its fingerprint shown next to the claim code, for the admin to compare. A
server that fails the check is refused and logged; when it is the only one,
nothing but the device key is written.

Enroll is idempotent for the same key, so running this again is always safe.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import discovery, identity, inventory
from .client import (
    AgentError,
    JoinToken,
    ServerClient,
    ca_fingerprint,
    check_base_url,
    fetch_ca_unverified,
    parse_join_token,
    same_fingerprint,
)
from .config import AgentState, Settings, atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollOptions:
    token: str = ""
    server: str = ""
    name: str = ""
    hardware_id: str = ""
    device_type: str = ""


@dataclass
class Enrolled:
    state: AgentState
    ca_pem: str
    key: Ed25519PrivateKey
    client: ServerClient
    # The CA was trusted on first use (no token): show its fingerprint to the admin.
    tofu: bool


def _pinned_pem(settings: Settings) -> str:
    try:
        return settings.paths.ca.read_text()
    except FileNotFoundError:
        return ""


def _servers(settings: Settings, opts: EnrollOptions, existing: AgentState | None,
             want_fp: str | None) -> tuple[list[str], bool]:
    """Base URLs to try in order, and whether they came from mDNS."""
    if opts.server:
        return [check_base_url(opts.server)], False
    if existing is not None and (want_fp is None or same_fingerprint(want_fp, existing.ca_fingerprint)):
        return [existing.server], existing.discovered
    log.info("looking for a fleetd server by mDNS (%s, %.0f s)", discovery.SERVICE_TYPE, settings.mdns_timeout)
    found = discovery.order(discovery.browse(settings.mdns_timeout, settings.mdns_interfaces), want_fp)
    urls = []
    for c in found:
        try:
            urls.append(check_base_url(c.url))
        except AgentError as e:
            log.warning("skipping %r: %s", c.name, e.message)
    if not urls:
        raise AgentError("unavailable", f"found no fleetd server by mDNS within {settings.mdns_timeout:.0f} s; "
                         "give its URL with --server https://HOST:8420", transient=True)
    return urls, True


def _trust(url: str, want_fp: str | None, pinned_pem: str) -> str:
    """The CA to trust for ``url``: the pinned one, the token's, or (no pin at all) the first one seen."""
    if pinned_pem and (want_fp is None or same_fingerprint(ca_fingerprint(pinned_pem), want_fp)):
        return pinned_pem
    pem = fetch_ca_unverified(url)
    got = ca_fingerprint(pem)
    if want_fp is not None and not same_fingerprint(got, want_fp):
        raise AgentError("permission_denied", f"refusing the server at {url}: its CA has fingerprint {got}, but "
                         f"the join token pins {want_fp}; this is not the fleet the token belongs to")
    return pem


def enroll(settings: Settings, opts: EnrollOptions) -> Enrolled:
    """Enroll (or re-enroll, idempotently) this device; the caller holds the state dir's lock."""
    paths = settings.paths
    paths.ensure()
    key = identity.load_or_create_key(paths.key)
    existing = AgentState.load(paths)
    token = parse_join_token(opts.token) if opts.token else None

    if opts.hardware_id:
        hardware_id = identity.check_hardware_id(opts.hardware_id)
    elif existing is not None:
        hardware_id = existing.hardware_id
    else:
        hardware_id = identity.detect_hardware_id()
    device_type = identity.check_device_type(opts.device_type or (existing.device_type if existing else "")
                                             or identity.default_device_type())
    name = opts.name or (existing.name if existing else "")

    pinned_pem = _pinned_pem(settings)
    if token is not None:
        want_fp: str | None = token.ca_fingerprint
    elif pinned_pem:
        want_fp = ca_fingerprint(pinned_pem)
    else:
        want_fp = None  # trust on first use
    urls, discovered = _servers(settings, opts, existing, want_fp)

    last: AgentError | None = None
    for url in urls:
        try:
            pem = _trust(url, want_fp, pinned_pem)
            client = ServerClient(url, pem, key)
        except AgentError as e:
            if len(urls) > 1:
                log.warning("%s", e.message)
            last = e
            continue
        try:
            resp = _enroll_call(client, hardware_id, device_type, key, token, name)
            state = _accept(resp, url, pem, existing, hardware_id, device_type, name, token is not None,
                            discovered)
        except AgentError as e:
            client.close()
            if len(urls) > 1:
                log.warning("enrolling with %s failed: %s", url, e)
            last = e
            continue
        except BaseException:
            client.close()
            raise
        if pem != pinned_pem:
            atomic_write(paths.ca, pem.encode())
        state.save(paths)
        client.device_id = state.device_id
        log.info("enrolled with %s as %s (%s)", url, state.device_id, state.status)
        return Enrolled(state=state, ca_pem=pem, key=key, client=client, tofu=want_fp is None)
    assert last is not None
    raise last


def _rekey_advice(hardware_id: str) -> str:
    return (f"An admin runs 'fleetd devices rekey {hardware_id}' and gives the device the token it prints (then run "
            "fleet-agent enroll --token TOKEN here, or the agent with --token TOKEN or FLEET_AGENT_TOKEN=TOKEN), or "
            "deletes the device.")


def lost_key_message(hardware_id: str) -> str:
    """What to do when Enroll answers 409: the hardware id is enrolled with another key."""
    return (f"hardware id {hardware_id} is already enrolled with another key (did this device lose its key?). "
            + _rekey_advice(hardware_id))


def key_lost_message(state: AgentState, why: str) -> str:
    """What to do when this enrolled device no longer has the key it enrolled with."""
    return (f"{why}: device {state.device_id} (hardware id {state.hardware_id}) lost the key it enrolled with, and a "
            "new key is not let in without an admin. " + _rekey_advice(state.hardware_id))


def _enroll_call(client: ServerClient, hardware_id: str, device_type: str, key: Ed25519PrivateKey,
                 token: JoinToken | None, name: str) -> dict[str, Any]:
    try:
        return client.enroll(hardware_id=hardware_id, device_type=device_type,
                             public_key=identity.public_key_b64(key), token=token.token if token else "",
                             name=name, inventory=inventory.collect())
    except AgentError as e:
        if e.code == "already_exists":  # 409: the hardware id has another key (docs/protocol.md §5)
            raise AgentError(e.code, lost_key_message(hardware_id), http_status=e.http_status) from None
        raise


def _accept(resp: dict[str, Any], url: str, pem: str, existing: AgentState | None, hardware_id: str,
            device_type: str, name: str, with_token: bool, discovered: bool) -> AgentState:
    fp = ca_fingerprint(pem)
    if resp.get("ca_fingerprint") and not same_fingerprint(str(resp["ca_fingerprint"]), fp):
        raise AgentError("permission_denied", f"the server at {url} says its CA is {resp['ca_fingerprint']}, but "
                         f"this device pinned {fp}; refusing it")
    signing = str(resp.get("signing_public_key", ""))
    try:
        if len(base64.b64decode(signing, validate=True)) != 32:
            raise ValueError
    except ValueError:
        raise AgentError("internal", "the server's Enroll answer has no valid signing_public_key") from None
    if existing is not None and existing.signing_public_key != signing:
        if not with_token:
            raise AgentError("permission_denied", "the server's artifact-signing key differs from the one pinned "
                             "when this device enrolled; refusing to trust it. To move the device to this fleet, "
                             "enroll again with a join token from it")
        log.warning("adopting a new artifact-signing key (%s): enrolled with a join token of another fleet", signing)
    device_id, status = str(resp.get("device_id", "")), str(resp.get("status", ""))
    if not device_id or status not in ("active", "pending"):
        raise AgentError("internal", f"unexpected Enroll answer (device_id {device_id!r}, status {status!r})")
    return AgentState(
        device_id=device_id, hardware_id=hardware_id, device_type=device_type, server=url, ca_fingerprint=fp,
        signing_public_key=signing, status=status, name=name, claim_code=str(resp.get("claim_code") or ""),
        poll_interval=int(resp.get("poll_interval") or 60),
        trust="token" if with_token else (existing.trust if existing else "tofu"), discovered=discovered)


__all__ = ["EnrollOptions", "Enrolled", "enroll", "key_lost_message", "lost_key_message"]
