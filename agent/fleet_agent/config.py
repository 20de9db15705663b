"""The state dir's layout, the agent's settings, and its two small JSON files.

``state.json`` is the device's identity with the server (written when it
changes); ``runtime.json`` is what the running agent last saw (written every
check-in, read by ``fleet-agent status``). Both are written temp → fsync →
rename, so a power cut leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/fleet-agent"
DEFAULT_MAX_BACKOFF = 300.0
DEFAULT_TELEMETRY_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MDNS_TIMEOUT = 3.0


class ConfigError(Exception):
    """A setting or a state file is unusable; the message says which and what to do."""


@dataclass(frozen=True)
class Paths:
    """Where everything lives under the state dir (see the agent contract)."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.json"

    @property
    def key(self) -> Path:
        return self.root / "device.key"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def reports_queue(self) -> Path:
        return self.queue / "reports"

    @property
    def telemetry_queue(self) -> Path:
        return self.queue / "telemetry"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise ConfigError(f"cannot create the state dir {self.root}: {e.strerror}; run as root or pass "
                              "--state-dir (or FLEET_AGENT_STATE_DIR) with a writable directory") from None


def _env_float(env: dict[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Knobs from the environment; the command line fills in the rest."""

    state_dir: Path
    max_backoff: float = DEFAULT_MAX_BACKOFF
    telemetry_max_bytes: int = DEFAULT_TELEMETRY_MAX_BYTES
    mdns_timeout: float = DEFAULT_MDNS_TIMEOUT
    # Browse mDNS only on the interfaces with these addresses (default: all).
    mdns_interfaces: list[str] | None = None
    # Check in every N seconds instead of the server's poll_interval (tests, debugging).
    poll_interval: float | None = None
    # Keep a client certificate from the fleet CA in client.pem, renewed at two thirds of its life (docs/pki.md).
    client_certificate: bool = False

    @classmethod
    def from_env(cls, state_dir: str | None = None, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        root = state_dir or e.get("FLEET_AGENT_STATE_DIR") or DEFAULT_STATE_DIR
        interfaces = [a.strip() for a in e.get("FLEET_AGENT_MDNS_INTERFACES", "").split(",") if a.strip()]
        poll = _env_float(e, "FLEET_AGENT_POLL_INTERVAL", 0.0, 0.0)
        return cls(
            state_dir=Path(root).expanduser().absolute(),
            max_backoff=_env_float(e, "FLEET_AGENT_MAX_BACKOFF", DEFAULT_MAX_BACKOFF, 0.1),
            telemetry_max_bytes=int(_env_float(e, "FLEET_AGENT_TELEMETRY_MAX_BYTES",
                                               DEFAULT_TELEMETRY_MAX_BYTES, 1024)),
            mdns_timeout=_env_float(e, "FLEET_AGENT_MDNS_TIMEOUT", DEFAULT_MDNS_TIMEOUT, 0.1),
            mdns_interfaces=interfaces or None,
            poll_interval=poll or None,
            client_certificate=e.get("FLEET_AGENT_CLIENT_CERTIFICATE", "").strip().lower() in ("1", "true", "yes"),
        )

    @property
    def paths(self) -> Paths:
        return Paths(self.state_dir)


# --- durable files ---------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(str(tmp), mode)
        os.replace(str(tmp), str(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; run as root or as the user that owns it") from None
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); restore it from a backup, or remove the state dir "
                          "and enroll again") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a JSON object; remove the state dir and enroll again")
    return obj


class StateLock:
    """One agent per state dir: an exclusive flock on the dir itself, held while enrolling or running."""

    def __init__(self, paths: Paths) -> None:
        self.root = paths.root
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        import fcntl

        fd = os.open(str(self.root), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"another fleet-agent is using {self.root}; stop it first (systemctl stop "
                              "fleet-agent), or give this one its own --state-dir") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- state.json --------------------------------------------------------------------

@dataclass
class AgentState:
    """What the device keeps after enrolling (state.json)."""

    device_id: str
    hardware_id: str
    device_type: str
    server: str
    ca_fingerprint: str
    # The fleet's artifact-signing Ed25519 public key, 32 raw bytes in base64: pinned at enrollment.
    signing_public_key: str
    status: str
    name: str = ""
    claim_code: str = ""
    poll_interval: int = 60
    # How the CA was pinned: "token" (its fingerprint came with a join token) or "tofu" (first use).
    trust: str = "token"
    # The server was found by mDNS, so it may be looked up again when its address changes.
    discovered: bool = False

    @classmethod
    def load(cls, paths: Paths) -> AgentState | None:
        obj = read_json(paths.state)
        if obj is None:
            return None
        known = {f.name for f in fields(cls)}
        missing = [n for n in ("device_id", "hardware_id", "device_type", "server", "ca_fingerprint",
                               "signing_public_key", "status") if not obj.get(n)]
        if missing:
            raise ConfigError(f"{paths.state} lacks {', '.join(missing)}; enroll again "
                              "(fleet-agent enroll --token ...)")
        return cls(**{k: v for k, v in obj.items() if k in known})

    def save(self, paths: Paths) -> None:
        write_json(paths.state, asdict(self))


# --- runtime.json ----------------------------------------------------------------

MAX_HANDLED = 500


@dataclass
class Runtime:
    """What the running agent last saw; also which actions it finished (so it never runs one twice)."""

    last_checkin: float = 0.0
    last_attempt: float = 0.0
    last_error: str = ""
    status: str = ""
    poll_interval: int = 0
    server: str = ""
    pid: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    # Ids of actions whose final state is queued or sent, newest last.
    handled_actions: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Paths) -> Runtime:
        try:
            obj = read_json(paths.runtime)
        except ConfigError as e:
            log.warning("%s; starting afresh", e)
            obj = None
        if obj is None:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def mark_handled(self, action_id: str) -> None:
        if action_id not in self.handled_actions:
            self.handled_actions.append(action_id)
            del self.handled_actions[:-MAX_HANDLED]

    def save(self, paths: Paths) -> None:
        write_json(paths.runtime, asdict(self))


__all__ = ["DEFAULT_STATE_DIR", "AgentState", "ConfigError", "Paths", "Runtime", "Settings", "StateLock",
           "atomic_write", "fsync_dir", "read_json", "write_json"]
