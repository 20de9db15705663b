"""Settings: defaults < config file (TOML) < environment (FLEETD_*) < command-line flags."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from . import dsn as dsns
from .errors import InvalidArgument
from .names import DDI_TENANT

ENV_PREFIX = "FLEETD_"
CONFIG_FILE_NAME = "fleetd.toml"
DOWNLOAD_OFFLOADS = ("", "x-accel")
_LOCATION = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9._-]*)+", re.ASCII)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: list[str]) -> tuple[Network, ...]:
    """``["127.0.0.1/32", "192.168.1.0/24"]`` → networks; InvalidArgument naming the bad entry."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise InvalidArgument(f"webhook_allowed_networks: {item!r} is not an IP network like 127.0.0.1/32 "
                                  "or fd12::/64") from None
    return tuple(out)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./fleetd-data"
    # Where the database is (docs/operations.md, "PostgreSQL"): "" = the data dir's SQLite file, fleetd.db;
    # "postgresql://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full" = a PostgreSQL database. Never shown with its
    # password (core/dsn.py).
    database: str = ""
    host: str = "0.0.0.0"
    port: int = 8420
    tls: bool = True
    mdns: bool = True
    # The address devices and install commands use; derived from host/port when empty.
    public_url: str = ""
    log_level: str = "info"
    # Largest JSON body an RPC call may carry.
    max_request_bytes: int = 1 << 20
    # Largest artifact upload.
    max_upload_bytes: int = 1 << 30
    # Login attempts per client address per minute.
    login_rate_per_minute: int = 10
    # Enrollment and challenge requests per client address per minute (a NAT may hide many devices).
    enroll_rate_per_minute: int = 600
    session_hours: int = 12
    reader_threads: int = 4
    # Housekeeping: delete unreferenced blobs / re-hash every blob to find bit rot.
    gc_interval_hours: float = 6
    scrub_interval_hours: float = 168
    # Seconds between rollout orchestrator passes; 0 = no background passes (tests drive them).
    rollout_pass_seconds: float = 5
    # Telemetry retention: raw points, then per-minute and per-hour rollups (docs/telemetry.md).
    telemetry_raw_days: float = 7
    telemetry_minute_days: float = 30
    telemetry_hour_days: float = 400
    # hawkBit DDI: the tenant in /{tenant}/controller/v1/... (compared case-insensitively, as hawkBit does).
    ddi_tenant: str = "DEFAULT"
    # Let anyone download, without a token, the artifacts of the open deployments of the controller named in the
    # URL (hawkBit's "anonymous download"); off by default.
    ddi_anonymous_download: bool = False
    # Devices that enrolled without a token and wait to be claimed; more are refused (0 = no cap).
    max_pending_devices: int = 10000
    # Such a device not heard from for this many days is deleted (0 = never).
    pending_expiry_days: float = 30
    # Webhooks may go to private (LAN) addresses: 10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10.
    webhook_allow_private: bool = False
    # CIDRs that webhooks may reach although refused otherwise (e.g. 127.0.0.1/32 for a receiver on this host);
    # never the cloud metadata addresses.
    webhook_allowed_networks: list[str] = msgspec.field(default_factory=list)
    # Password hashing (scrypt, ~0.1 s of CPU each) runs on this many threads, with at most this many more
    # checks waiting; beyond that, logins and password changes answer resource_exhausted (429, Retry-After).
    # 0 workers: one per two cores, at most two.
    password_hash_workers: int = 0
    password_hash_queue: int = 8
    # Slowloris guard (docs/operations.md, "Connection limits"): seconds a connection gets to send a complete
    # request head, and how many connections may wait for theirs at once (one more closes the oldest).
    request_head_timeout: float = 10
    max_unfinished_requests: int = 500
    # Proxies (IPs or CIDRs) whose X-Forwarded-For / X-Forwarded-Proto are believed; none by default.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # /healthz reports degraded when the data dir's disk has less free space than this many MiB; 0: never.
    disk_min_free_mib: int = 100
    # Telemetry cardinality: distinct metric names one device may send, and the whole fleet.
    max_metric_names_per_device: int = 500
    max_metric_names: int = 50_000
    # Behind nginx: "x-accel" answers an authorized blob GET with X-Accel-Redirect to
    # download_offload_location + "/<sha[:2]>/<sha256>" and no body, and nginx sends the file (docs/operations.md,
    # "Downloads through nginx"). "" (default): fleetd sends the bytes itself.
    download_offload: str = ""
    download_offload_location: str = "/_fleetd_blobs"
    # Where blobs live (docs/operations.md, "Artifacts in S3"): "" = the data dir's blobs/ folder; "s3://bucket/prefix"
    # = an S3-compatible bucket. Credentials come only from the AWS_* environment, never from a settings file.
    blob_store: str = ""
    s3_endpoint: str = ""  # "" = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS itself
    s3_region: str = ""  # "" = AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    s3_ca_bundle: str = ""  # "" = AWS_CA_BUNDLE, else the system's certificates
    # Answer an authorized blob GET with a redirect to a pre-signed URL of the bucket instead of proxying the bytes.
    s3_presigned_downloads: bool = False
    # On PostgreSQL: the file holding the key encryption key that seals the fleet's keys in the database (32 bytes,
    # base64; docs/security.md, "Keys at rest"). "" = the FLEETD_KEY_ENCRYPTION_KEY environment variable holds the
    # key itself. Unused on SQLite.
    key_encryption_key_file: str = ""
    # While rotating that key: the file of the one the keys were sealed with until now (or the environment variable
    # FLEETD_KEY_ENCRYPTION_KEY_PREVIOUS); a replica that has both re-seals the keys with the new one.
    previous_key_encryption_key_file: str = ""
    # PostgreSQL replicas (docs/operations.md, "Replicas"): the fleet lease's timing. A holder stops the fleet-scope
    # parts after lease_seconds / 2 without an answer from the database; another replica takes over within about
    # lease_check_seconds + lease_seconds / 2 of the holder's death.
    lease_seconds: float = 6
    lease_check_seconds: float = 1
    # Device client certificates (docs/pki.md): their lifetime in days (a device renews at about two thirds of it).
    device_certificate_days: int = 90
    # Device authentication by client certificate through a TLS-terminating proxy (docs/pki.md, "Client
    # certificates through a proxy"): the request header the proxy puts the verified certificate in ("" = off),
    # believed only from these proxies' addresses (IPs or CIDRs).
    client_cert_header: str = ""
    client_cert_proxies: list[str] = msgspec.field(default_factory=list)
    # Remote access (docs/remote-access.md): devices that enabled it keep a WebSocket channel here, and users of
    # remote_role or above open terminal sessions on them. Off: no WebSocket routes, no WebSocket library loaded.
    remote_access: bool = False
    remote_role: str = "admin"
    remote_sessions_per_device: int = 20
    remote_sessions_total: int = 200
    # A session with no bytes either way for this long is closed.
    remote_idle_seconds: float = 900
    # The largest file `fleetd devices cp` moves either way, in MiB.
    remote_copy_max_mib: int = 1024
    # Record what each terminal session showed (DATA_DIR/recordings/), for `fleetd devices replay`.
    remote_record_terminals: bool = False
    # Recordings last written this many days ago are deleted (their audit entries say so); 0 = kept forever.
    remote_recording_days: float = 30
    # MQTT (docs/mqtt.md): the broker fleetd connects to as a service client, "mqtts://HOST:PORT"; "" = none (HTTPS
    # polling only, and nothing of MQTT is loaded). Its client certificate and key: "" = the data dir's
    # mqtt-client.pem / mqtt-client.key, which fleetd issues from the fleet CA (CN fleetd-service). The client id:
    # "" = one of this host and data dir's, the same on every start (its persistent session at the broker).
    mqtt_url: str = ""
    mqtt_cert_file: str = ""
    mqtt_key_file: str = ""
    mqtt_client_id: str = ""

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise InvalidArgument(f"port must be 0..65535, got {self.port}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise InvalidArgument(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        for name in ("max_request_bytes", "max_upload_bytes", "login_rate_per_minute", "enroll_rate_per_minute",
                     "session_hours", "reader_threads", "gc_interval_hours", "scrub_interval_hours",
                     "telemetry_raw_days", "telemetry_minute_days", "telemetry_hour_days"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive")
        if self.password_hash_workers < 0 or self.password_hash_queue < 0:
            raise InvalidArgument("password_hash_workers and password_hash_queue must be 0 or more "
                                  "(0 workers: one per two cores)")
        DDI_TENANT.check(self.ddi_tenant)
        if not 1 <= self.max_metric_names_per_device <= self.max_metric_names:
            raise InvalidArgument("max_metric_names_per_device must be at least 1 and at most max_metric_names "
                                  f"({self.max_metric_names}), got {self.max_metric_names_per_device}")
        for name in ("max_pending_devices", "pending_expiry_days", "remote_recording_days"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be 0 (no limit) or positive")
        self.webhook_allowed_networks = [str(n) for n in parse_networks(self.webhook_allowed_networks)]
        if self.request_head_timeout <= 0 or self.max_unfinished_requests <= 0:
            raise InvalidArgument("request_head_timeout and max_unfinished_requests must be positive")
        if self.disk_min_free_mib < 0:
            raise InvalidArgument("disk_min_free_mib must be 0 (no check) or more")
        self.trusted_proxies = [_ip_or_network(p) for p in self.trusted_proxies]
        self.client_cert_proxies = [_ip_or_network(p, "client_cert_proxies") for p in self.client_cert_proxies]
        if not 1 <= self.device_certificate_days <= 3650:
            raise InvalidArgument(f"device_certificate_days must be 1..3650, got {self.device_certificate_days}")
        self.client_cert_header = self.client_cert_header.strip().lower()
        if self.client_cert_header and not self.client_cert_proxies:
            raise InvalidArgument("client_cert_header is set but client_cert_proxies is empty: list the addresses of "
                                  "the proxies that verify client certificates (only their header is believed)")
        if self.download_offload not in DOWNLOAD_OFFLOADS:
            raise InvalidArgument(f"download_offload must be \"x-accel\" (nginx sends blob files) or \"\" (fleetd "
                                  f"does), got {self.download_offload!r}")
        self.download_offload_location = self.download_offload_location.rstrip("/")
        if not _LOCATION.fullmatch(self.download_offload_location):
            raise InvalidArgument("download_offload_location must be an nginx location path like /_fleetd_blobs "
                                  "(starting with /, letters, digits and -._/ only), got "
                                  f"{self.download_offload_location!r}")
        if not 0 < 3 * self.lease_check_seconds <= self.lease_seconds:
            raise InvalidArgument(f"lease_check_seconds must be positive and at most a third of lease_seconds "
                                  f"({self.lease_seconds:g}), got {self.lease_check_seconds:g}")
        self._check_blob_store()
        if self.remote_role not in ("viewer", "operator", "admin"):
            raise InvalidArgument(f"remote_role must be viewer, operator or admin, got {self.remote_role!r}")
        if (min(self.remote_sessions_per_device, self.remote_sessions_total, self.remote_copy_max_mib) < 1
                or self.remote_idle_seconds <= 0):
            raise InvalidArgument("remote_sessions_per_device, remote_sessions_total, remote_idle_seconds and "
                                  "remote_copy_max_mib must be positive")
        self._check_mqtt()
        if self.database and not dsns.is_dsn(self.database):
            raise InvalidArgument("database must be \"\" (the data dir's SQLite file) or a PostgreSQL URL like "
                                  "postgresql://USER:PASSWORD@HOST:5432/DATABASE, got "
                                  f"{dsns.redact(self.database)!r}")

    def __repr__(self) -> str:
        """The settings with the database's password hidden (a repr may end up in a log or a test report)."""
        fields = ", ".join(f"{name}={(dsns.redact(v) if name == 'database' else v)!r}"
                           for name in self.__struct_fields__ for v in (getattr(self, name),))
        return f"Settings({fields})"

    def _check_blob_store(self) -> None:
        if self.blob_store:
            split_s3_url(self.blob_store)
            if self.download_offload:
                raise InvalidArgument("download_offload (nginx sends the data dir's blob files) cannot be used with "
                                      f"blob_store {self.blob_store!r}: turn on s3_presigned_downloads instead")
        if self.s3_presigned_downloads and not self.blob_store:
            raise InvalidArgument("s3_presigned_downloads needs an S3 blob store: set blob_store = "
                                  "\"s3://BUCKET/prefix\" too, or turn it off")
        if self.s3_endpoint and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", self.s3_endpoint):
            raise InvalidArgument(f"s3_endpoint must be a URL like https://s3.example.com:9000, got "
                                  f"{self.s3_endpoint!r}")

    def _check_mqtt(self) -> None:
        if self.mqtt_url:
            mqtt_address(self.mqtt_url)
        if bool(self.mqtt_cert_file) != bool(self.mqtt_key_file):
            raise InvalidArgument("mqtt_cert_file and mqtt_key_file go together: set both (a client certificate "
                                  "and its key) or neither (fleetd issues its own from the fleet CA)")
        if self.mqtt_client_id and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.mqtt_client_id):
            raise InvalidArgument("mqtt_client_id must be 1-64 of A-Z a-z 0-9 _ . : -, got "
                                  f"{self.mqtt_client_id!r}")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as ("bucket", "some/prefix/") (prefix "" when none); InvalidArgument else."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    bad_prefix = bool(prefix) and any(p in ("", ".", "..") for p in prefix.split("/"))
    if rest == url or not _BUCKET.fullmatch(bucket) or bad_prefix:
        raise InvalidArgument(f"blob_store must be \"\" (the data dir's blobs folder) or s3://BUCKET/prefix with an "
                              f"S3 bucket name (3-63 of a-z 0-9 . -), got {url!r}")
    return bucket, prefix + "/" if prefix else ""


def mqtt_address(url: str) -> tuple[str, int]:
    """``mqtts://HOST[:PORT]`` as (host, port), port 8883 when not given; InvalidArgument else."""
    m = re.fullmatch(r"mqtts://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?", url)
    if not m or not 0 < int(m[2] or 8883) < 65536:
        raise InvalidArgument(f"mqtt_url must be mqtts://HOST:PORT (the broker's TLS listener, e.g. "
                              f"mqtts://broker.example.com:8883), got {url!r}")
    return m[1].strip("[]"), int(m[2] or 8883)


def _ip_or_network(value: str, what: str = "trusted_proxies") -> str:
    """The canonical form of an IP address or a CIDR network (host bits allowed: 10.1.2.3/8 is 10.0.0.0/8)."""
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is not an IP address or a CIDR network "
                              "(e.g. 10.0.0.5 or 10.0.0.0/24)") from None


def _field_names() -> tuple[str, ...]:
    return Settings.__struct_fields__


_LIST_FIELDS = frozenset(f.name for f in msgspec.inspect.type_info(Settings).fields  # type: ignore[attr-defined]
                         if isinstance(f.type, msgspec.inspect.ListType))


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _field_names():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            out[name] = [v.strip() for v in raw.split(",") if v.strip()] if name in _LIST_FIELDS else raw
    return out


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config file {path}: {e}") from None
    unknown = set(data) - set(_field_names())
    if unknown:
        raise InvalidArgument(f"config file {path}: unknown settings {sorted(unknown)}; "
                              f"known: {', '.join(_field_names())}")
    return data


def load_settings(
    flags: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge every source; flags whose value is None are treated as not given."""
    environ = dict(os.environ) if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = _from_env(environ)
    merged: dict[str, Any] = {}
    data_dir = flags.get("data_dir") or env.get("data_dir") or Settings().data_dir
    if config_file is None:
        config_file = environ.get(ENV_PREFIX + "CONFIG")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise InvalidArgument(f"config file {path} does not exist")
        merged.update(_from_file(path))
    else:
        default_file = Path(data_dir).expanduser() / CONFIG_FILE_NAME
        if default_file.is_file():
            merged.update(_from_file(default_file))
    merged.update(env)
    merged.update(flags)
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid setting: {e}") from None
