"""``fleetd mqtt broker-config``: a Mosquitto 2.0 configuration for fleetd's devices, and the files it names.

The broker authenticates every client by its certificate from the fleet CA (``require_certificate``), takes the
certificate's common name as the user name (``use_identity_as_username``: a device's id, or fleetd's own
SERVICE_USER), refuses revoked ones (``crlfile``) and lets each device reach only its own topics (``acl_file``,
patterns on ``%u``). Persistence keeps QoS 1 messages and persistent sessions over a broker restart. The dynamic
security plugin lets fleetd disconnect and shut out a revoked device at once (revocation.py).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ..core.fsutil import atomic_write
from ..core.pki import KeyMaterial
from . import identity, revocation, topics

PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                "/usr/local/lib/mosquitto_dynamic_security.so", "/usr/lib64/mosquitto_dynamic_security.so")
DYNSEC_FILE = "dynamic-security.json"  # in data/: the plugin saves its state there


def find_plugin() -> str:
    """Where this machine's mosquitto has its dynamic security plugin ("" if it has none)."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return ""


@dataclass(frozen=True)
class BrokerFiles:
    dir: Path
    config: str  # mosquitto.conf's text, also written as dir/mosquitto.conf


def acl_text() -> str:
    """The ACL file: fleetd's service client reaches every device's topics; each device only its own, and only
    in the direction the topic map gives (docs/mqtt.md)."""
    lines = ["# fleetd MQTT ACL (fleetd mqtt broker-config). The user name is the client certificate's CN.",
             "", f"user {topics.SERVICE_USER}"]
    lines += [f"topic read {topics.ROOT}/+/{leaf}" for leaf in topics.UPLINK]
    lines += [f"topic write {topics.ROOT}/+/{leaf}" for leaf in topics.DOWNLINK]
    lines += ["", "# Every device: its own topics only (%u = its certificate's CN, the device id)."]
    lines += [f"pattern write {topics.ROOT}/%u/{leaf}" for leaf in topics.UPLINK]
    lines += [f"pattern read {topics.ROOT}/%u/{leaf}" for leaf in topics.DOWNLINK]
    return "\n".join(lines) + "\n"


def config_text(out: Path, host: str, port: int, user: str, plugin: str) -> str:
    return f"""\
# Mosquitto 2.0 configuration for fleetd (fleetd mqtt broker-config; docs/mqtt.md).
# Clients are authenticated by a client certificate from the fleet CA; its CN is the user name.
user {user}
per_listener_settings false
allow_anonymous false
acl_file {out / "acl"}
persistence true
persistence_location {out / "data"}/
autosave_interval 60
# QoS 1 messages kept for an offline persistent session (fleetd restarting, a device away).
max_queued_messages 10000
log_dest stderr
log_type error
log_type warning
log_type notice
# fleetd disconnects revoked devices and shuts them out through this plugin ($CONTROL, docs/mqtt.md).
plugin {plugin}
plugin_opt_config_file {out / "data" / DYNSEC_FILE}

listener {port} {host}
cafile {out / "ca.pem"}
certfile {out / "broker.pem"}
keyfile {out / "broker.key"}
crlfile {out / "crl.pem"}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""


def write_broker_files(out: Path, ca: KeyMaterial, *, host: str, port: int, names: list[str],
                       user: str, plugin: str) -> BrokerFiles:
    """Write the CA, a broker certificate for ``names``, an empty CRL, the ACL, the dynamic security plugin's first
    configuration (kept if there: the plugin's state) and mosquitto.conf (loading ``plugin``) into ``out``."""
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    cert, key = identity.broker_certificate(ca, names)
    atomic_write(out / "ca.pem", ca.ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    atomic_write(out / "broker.pem", cert, 0o644)
    atomic_write(out / "broker.key", key, 0o600)
    atomic_write(out / "crl.pem", identity.empty_crl(ca), 0o644)
    atomic_write(out / "acl", acl_text().encode(), 0o644)
    dynsec = out / "data" / DYNSEC_FILE
    if not dynsec.exists():
        atomic_write(dynsec, json.dumps(revocation.plugin_config(), indent=2).encode(), 0o644)  # no secrets
    text = config_text(out, host, port, user, plugin)
    atomic_write(out / "mosquitto.conf", text.encode(), 0o644)
    return BrokerFiles(out, text)
