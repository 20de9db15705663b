"""The Fleet: the one core object that owns settings, keys, the store, the services and the background parts."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .accounts import storage as accounts_storage
from .accounts import users as auth
from .accounts.audit import SYSTEM
from .accounts.passwords import PasswordHasher, default_workers
from .accounts.users import Authenticator
from .alerts.egress import Policy
from .alerts.engine import AlertEngine, AlertRulesChanged
from .alerts.webhooks import Deliverer
from .artifacts.uploads import sessions_for
from .core.config import Settings
from .core.effects import Effect, Publish
from .core.events import EventBus
from .core.lifecycle import Part
from .core.metrics import DB_SIZE_HELP, Metrics, Read
from .core.pki import FleetKeys
from .ddi import state as ddi_state
from .ddi import tokens as ddi_tokens
from .ddi.state import DdiState
from .devices import registry
from .devices import storage as devices_storage
from .devices.challenges import challenges_for
from .devices.hub import DeviceHub
from .devices.presence import Presence
from .maintenance import Maintenance
from .rollouts.orchestrator import Orchestrator
from .store import blobs
from .store.blob_backend import open_blobs
from .store.database import DB_NAME, Store, database_size, open_migrated, processes_using, transaction
from .store.keys import load_keys
from .store.ratelimits import limiter_for
from .telemetry.intake import MetricNames, TelemetryIntake
from .telemetry.rollups import MinuteSums, Retention, Rollups

if TYPE_CHECKING:
    from .devices.certificate_service import ClientCertificates, Crl
    from .store.changes import ChangeFeed
    from .store.lease import FleetLease

log = logging.getLogger(__name__)

LOCK_NAME = "fleetd.lock"


def prepare_data_dir(path: Path) -> Path:
    """Create the data dir (0700) and its blobs/ folder."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    (path / "blobs").mkdir(exist_ok=True)
    return path


class DataDirLocked(RuntimeError):
    pass


class Fleet:
    def __init__(self, settings: Settings, *, lock: bool = True, first_admin: bool = False) -> None:
        """``first_admin``: create the first admin (:meth:`ensure_first_admin`, its answer in ``self.first_admin``)
        before the device directory loads: its password hash (scrypt, 32 MiB for a moment) then does not add to
        the memory 100,000 devices take, and the start's peak stays low. The database is ``settings.database``
        (a PostgreSQL DSN), else the data dir's SQLite file; the keys are the data dir's on SQLite, the database's on
        PostgreSQL."""
        self.settings = settings
        self.data_dir = prepare_data_dir(settings.data_path)
        self._lock_fd: int | None = None
        if lock:
            self._take_lock()
        try:
            self.store = Store(settings.database or self.data_dir / DB_NAME, settings.reader_threads)
        except BaseException:  # e.g. a PostgreSQL server that cannot be reached
            self._unlock()
            raise
        self.changes: ChangeFeed | None = None
        try:
            # The data dir's on SQLite; on PostgreSQL the database's, shared by the replicas (store/keys.py).
            self.keys: FleetKeys = load_keys(self.store, self.data_dir, settings, self._extra_names())
            # PostgreSQL: the other replicas' changes, listened to before the caches below load (store/changes.py).
            self.changes = self._change_feed()
            self.blobs = open_blobs(settings, self.data_dir, self.store)
        except BaseException:  # e.g. no key encryption key, an unreachable S3 bucket: free what is open, then say so
            if self.changes is not None:
                self.changes.close()
            self.store.close()
            self._unlock()
            raise
        # After the blob store: a start that fails on it must not have made the first admin (its password is shown
        # once the server starts).
        self.first_admin = self.ensure_first_admin() if first_admin else None
        self.events = EventBus()
        self.hub = DeviceHub(self.store, self.keys.token_key)
        self.ddi = DdiState(self.store)
        # The per-minute sums that spare the rollup job a read of the rows: on SQLite only. Replicas store points
        # on every replica while one of them (the lease holder) rolls up: it reads the rows (docs/telemetry.md).
        self.telemetry = TelemetryIntake(self.store, MetricNames(settings.max_metric_names_per_device,
                                                                 settings.max_metric_names),
                                         MinuteSums() if self.store.dsn is None else None)
        self.authenticator = Authenticator(self.store, self.hub.tokens)
        self.challenges = challenges_for(self.store, self.hub.tokens)  # signed, use in the database on PostgreSQL
        # In memory on SQLite; in the database on PostgreSQL, so that replicas share them (store/ratelimits.py).
        self.enroll_limiter = limiter_for(self.store, settings.enroll_rate_per_minute, 60.0, "enrollment")
        self.challenge_limiter = limiter_for(self.store, settings.enroll_rate_per_minute, 60.0, "authentication")
        self.login_limiter = limiter_for(self.store, settings.login_rate_per_minute, 60.0, "login")
        self.passwords = PasswordHasher(settings.password_hash_workers or default_workers(),
                                        settings.password_hash_queue)
        self.started_at = time.time()
        self.metrics = Metrics(self.store)
        self.rollups = Rollups(self.store, Retention(settings.telemetry_raw_days, settings.telemetry_minute_days,
                                                     settings.telemetry_hour_days), metrics=self.metrics,
                               sums=self.telemetry.sums)
        self.egress = Policy.of(settings.webhook_allow_private, settings.webhook_allowed_networks)
        self.webhooks = Deliverer(self.store, policy=self.egress)
        self.alerts = AlertEngine(self.store, self.metrics, deliverer=self.webhooks)
        self.alerts.replicated = self.store.dsn is not None
        self.orchestrator = Orchestrator(self)
        self.uploads = sessions_for(self.store)  # in the database on PostgreSQL, for replicas
        self._register_metrics()
        self._effect_handlers()

    def _effect_handlers(self) -> None:
        """The one table of what runs after a commit: each effect kind a write may record, and its handlers."""
        hub, ddi, tokens = self.hub, self.ddi, self.ddi.tokens
        table: list[tuple[type[Effect], Callable[[Any], None]]] = [
            (Publish, self.events.deliver),
            (registry.DeviceChanged, hub.device_changed),
            (registry.DeviceGone, hub.device_gone),
            (registry.DeviceGone, ddi.device_gone),
            (registry.ActionsOpen, hub.actions_open),
            (ddi_state.ControllerKnown, ddi.controller_known),
            (ddi_state.Fetched, ddi.fetched),
            (ddi_state.Installed, ddi.installed_base),
            (ddi_state.ConfigAnswered, ddi.config_answered),
            (ddi_tokens.TokenAdded, tokens.added),
            (ddi_tokens.TokensDropped, tokens.dropped),
            (ddi_tokens.GatewayRevoked, tokens.gateway_revoked),
            (AlertRulesChanged, self.alerts.rules_changed),
        ]
        for kind, handler in table:
            self.store.on_effect(kind, handler)
        if self.changes is not None:  # what the change feed reloads after it lost its connection
            self.changes.on_reload(DeviceHub.load_state, hub.apply_state)
            self.changes.on_reload(ddi_state.load, ddi.apply)
            self.changes.on_gap(self.events.gap)

    @functools.cached_property
    def crl(self) -> Crl:
        """The CRL of revoked device certificates (docs/pki.md), loaded on first use."""
        from .devices.certificate_service import Crl
        return Crl(self)

    @functools.cached_property
    def client_certificates(self) -> ClientCertificates:
        """Authenticates devices by a client certificate a trusted proxy forwarded, loaded on first use."""
        from .devices.certificate_service import ClientCertificates
        return ClientCertificates(self)

    def _change_feed(self) -> ChangeFeed | None:
        if self.store.dsn is None or self.store.origin is None:
            return None
        from .store.changes import ChangeFeed  # psycopg: PostgreSQL mode only

        return ChangeFeed(self.store.dsn, self.store.origin, self.store.run_effects, self.store.effect_kinds)

    def _register_metrics(self) -> None:
        """The collected metrics of the parts without an object of their own (the rollups and the alert engine
        register theirs)."""
        m, hub = self.metrics, self.hub
        m.gauge("fleetd_blobs_bytes", "Bytes of stored blobs.", Read(blobs.stored_bytes))
        if self.store.dsn is not None:  # a SQLite store's size is its files' (the registry's own gauge)
            m.gauge("fleetd_db_size_bytes", DB_SIZE_HELP, Read(database_size))
            m.gauge("fleetd_fleet_lease_held", "1 on the replica that holds the fleet lease and runs the fleet-scope "
                    "parts (orchestrator, maintenance, ...), else 0.",
                    lambda: int(bool(self.lease and self.lease.running)))
        accounts = accounts_storage
        m.gauge("fleetd_users", "Admin users that are not disabled.", Read(accounts.enabled_user_count))
        m.gauge("fleetd_api_keys_active", "API keys neither revoked nor expired.", Read(accounts.active_api_key_count))
        m.counter("fleetd_audit_entries_total", "Audit log entries ever written.", Read(accounts.audit_entries_written))
        m.gauge("fleetd_devices", "Devices by status.", Read(devices_storage.device_count_by_status, ("status",)))
        m.gauge("fleetd_devices_online", "Active devices that checked in within their interval.",
                lambda: hub.runtime.count("active", time.time(), registry.ONLINE_SLACK))
        m.gauge("fleetd_actions_open", "Actions not yet ended, by kind and state.",
                Read(devices_storage.open_action_count_by_kind_and_state, ("kind", "state")))
        m.counter("fleetd_telemetry_points_total", "Telemetry points stored since start.",
                  lambda: self.telemetry.points_total)
        m.counter("fleetd_telemetry_insert_cpu_seconds_total", "CPU seconds the writer spent inserting telemetry "
                  "points.", lambda: self.telemetry.insert_cpu_seconds)
        m.gauge("fleetd_password_checks_pending", "Password hashes running or waiting on the hashing pool.",
                lambda: self.passwords.pending)
        m.counter("fleetd_password_checks_refused_total", "Logins and password changes refused because the "
                  "hashing pool was full (answered 429).", lambda: self.passwords.refused)

    def _extra_names(self) -> list[str]:
        names = []
        if self.settings.host not in ("0.0.0.0", "::", ""):
            names.append(self.settings.host)
        if self.settings.public_url:
            from urllib.parse import urlparse
            host = urlparse(self.settings.public_url).hostname
            if host:
                names.append(host)
        return names

    def _take_lock(self) -> None:
        self._lock_fd = lock_data_dir(self.data_dir)

    @functools.cached_property
    def parts(self) -> tuple[Part, ...]:
        """The background parts, in start order; the app's lifespan stops them in reverse (docs/architecture.md,
        "Background parts"). The hub starts before presence, which reads it; the deliverer before the alert
        engine, which wakes it; the telemetry intake stops last, after everything that feeds it."""
        presence = Presence(self.hub, self.events, shared=self.changes is not None)
        fleet_parts: list[Part] = [self.rollups, self.webhooks, self.alerts, presence, Maintenance(self),
                                   self.orchestrator]
        parts: list[Part] = [self.telemetry, self.hub, *fleet_parts]
        if self.changes is not None:  # PostgreSQL replicas: the fleet lease holds the fleet-scope parts
            from .store.lease import FleetLease

            lease = FleetLease(self.changes.dsn, fleet_parts, seconds=self.settings.lease_seconds,
                               check=self.settings.lease_check_seconds)
            parts = [self.telemetry, self.changes, self.hub, lease]
        if (own := Maintenance.of_process(self)) is not None:  # this data dir's recordings, on every replica
            parts.append(own)
        if self.settings.mqtt_url:
            from .mqtt.bridge import MqttBridge  # aiomqtt and paho: loaded only with a broker to talk to

            parts.append(MqttBridge(self))
        if self.settings.mdns:
            from .discovery import Advertiser  # zeroconf costs memory; only load it when advertising

            parts.append(Advertiser.for_fleet(self))  # last: it announces a server that is ready
        return tuple(parts)

    @functools.cached_property
    def public_url(self) -> str:
        """The URL devices and install commands use (computed once: it may look up the host's addresses)."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            from .core.pki import local_names_and_addresses
            _, addrs = local_names_and_addresses()
            external = [a for a in addrs if ":" not in a and not a.startswith("127.")]
            host = external[0] if external else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.settings.scheme}://{host}:{self.settings.port}"

    def ensure_first_admin(self) -> tuple[str, str] | None:
        """On first start, create user ``admin`` with a random password to show once."""
        def create(conn):  # type: ignore[no-untyped-def]
            if accounts_storage.any_user(conn):
                return None
            password = auth.generate_password("admin")
            auth.create_user(conn, SYSTEM, "admin", password, "admin", must_change_password=True)
            return "admin", password
        return self.store.write_sync(create)

    @property
    def lease(self) -> FleetLease | None:
        """The fleet lease (PostgreSQL replicas), None on SQLite."""
        from .store.lease import FleetLease

        return next((p for p in self.parts if isinstance(p, FleetLease)), None)

    def close(self) -> None:
        if self.changes is not None:
            self.changes.close()
        self.passwords.close()
        self.blobs.close()
        self.store.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def lock_data_dir(data_dir: Path) -> int:
    """Take the data dir's lock, which a running server holds (the returned fd holds it until closed); DataDirLocked
    naming the holder when another process has it."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holders = processes_using(path)
        who = f" ({', '.join(holders)})" if holders else ""
        raise DataDirLocked(f"another fleetd server{who} is running on {data_dir}") from None
    return fd


def open_offline(data_dir: str | Path, database: str = "") -> sqlite3.Connection:
    """A direct connection to a fleet's store, for offline CLI commands: ``database`` (the setting: a PostgreSQL
    DSN), else the data dir's SQLite file. A damaged or locked SQLite file raises db.StoreUnusable, a PostgreSQL
    server that cannot be reached FailedPrecondition (what is wrong, what to do), within seconds, as at server
    start."""
    path = prepare_data_dir(Path(data_dir).expanduser().resolve())
    return open_migrated(database or path / DB_NAME)


__all__ = ["Fleet", "open_offline", "transaction"]
