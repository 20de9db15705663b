"""Artifacts: one version of one component, its signed manifest, and references devices download.

The manifest is canonical JSON (keys sorted, no whitespace, UTF-8; only strings,
integers, booleans, null, lists and objects, so it is also RFC 8785 canonical)
signed with the fleet's Ed25519 signing key. Devices verify the signature with
the public key they pinned at enrollment, then the size and sha256 of the file.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, now, to_dt
from ..core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..core.fields import Int32
from ..core.names import ARTIFACT_NAME, DEVICE_TYPE_PATTERN, ENV_NAME, Kind, check_file_name
from ..core.semver import Version
from ..devices.devauth import decode_b64_field, verify_signature
from ..store import blobs
from . import storage

# An artifact keeps its blob from garbage collection.
blobs.REFERENCES.append(("artifacts", "sha256"))

KINDS = ("app", "agent", "firmware")
# raw: the file as uploaded; rtos-image: firmware the server wrapped and signed (docs/rtos-images.md).
FORMATS = ("raw", "rtos-image")
MANIFEST_FORMAT = "fleetd-manifest-v1"
RESTART_POLICIES = ("always", "on-failure", "never")
# The agent's built-in update modules (fleet_agent.modules.ModuleName holds the same names); any other valid
# name is an external module on the device. `app` is the default for kind app, left out of the manifest.
BUILTIN_MODULES = ("app", "file", "directory", "container", "os-image")
DEFAULT_MODULE = "app"
MODULE_NAME = Kind("module name", r"[a-z0-9][a-z0-9_.-]{0,63}",
                   "1-64 characters of a-z 0-9 _ . -, starting with a letter or digit (e.g. file, directory)")
META_KEY = Kind("meta key", r"[A-Za-z_][A-Za-z0-9_.-]{0,63}",
                "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or _ (e.g. path)")
MAX_META = 32
MAX_META_VALUE = 1024
MAX_OFFLINE_SIGNATURES = 8
LISTED_DEVICES = 100  # device ids named in a deployment summary; the count covers the rest


class HealthCheck(msgspec.Struct, kw_only=True, omit_defaults=True):
    grace_seconds: Int32 = 30
    http_url: str | None = None
    # A probe command; empty = none (proto3 has no unset repeated field).
    command: list[str] = []


class InstallSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How an ``app`` runs. Without one, the file itself is run."""

    # Empty: run the file itself.
    command: list[str] = []
    env: dict[str, str] = {}
    working_dir: str | None = None
    restart: str = "on-failure"
    health: HealthCheck | None = None

    def __post_init__(self) -> None:
        if self.restart not in RESTART_POLICIES:
            raise InvalidArgument(f"restart must be one of {', '.join(RESTART_POLICIES)}")
        if any(not c for c in self.command):
            raise InvalidArgument("command must be a list of non-empty strings")
        if self.health and not 0 <= self.health.grace_seconds <= 3600:
            raise InvalidArgument("health grace_seconds must be between 0 and 3600")
        if self.health and self.health.http_url and not self.health.http_url.startswith(("http://", "https://")):
            raise InvalidArgument("health http_url must start with http:// or https://")
        if self.health and any(not c for c in self.health.command):
            raise InvalidArgument("health command must be a list of non-empty strings")
        for k, v in self.env.items():
            # ASCII names only: canonical_json sorts keys by code point, RFC 8785 by UTF-16 unit; for ASCII
            # they agree.
            ENV_NAME.check(k)
            if "\0" in v:
                raise InvalidArgument(f"env {k} must not contain NUL characters")


class OfflineSignature(msgspec.Struct, kw_only=True):
    public_key: str  # base64 raw Ed25519
    signature: str   # base64 over the manifest bytes


class Artifact(msgspec.Struct, kw_only=True):
    id: str
    name: str
    version: str
    kind: str
    device_types: list[str]
    sha256: str
    size: int
    file_name: str
    md5: str = ""
    sha1: str = ""
    install_spec: InstallSpec | None = None
    manifest: str = ""
    signature: str = ""
    offline_signatures: list[OfflineSignature] = []
    created_by: str | None = None
    created_at: dt.datetime | None = None
    format: str = "raw"
    # rtos-image only: the image's anti-rollback counter.
    security_counter: int | None = None


def check_metadata(name: str, version: str, kind: str, device_types: list[str], file_name: str) -> None:
    ARTIFACT_NAME.check(name)
    Version(version)
    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not device_types:
        raise InvalidArgument("give at least one device type or pattern (e.g. linux-aarch64, linux-*, sim)")
    for t in device_types:
        DEVICE_TYPE_PATTERN.check(t)
    check_file_name(file_name)


def check_install_spec(kind: str, spec: InstallSpec | None) -> None:
    if spec is not None and kind != "app":
        raise InvalidArgument(f"an install spec applies to app artifacts only; a {kind} is installed by "
                              f"{'the device bootloader' if kind == 'firmware' else 'the agent itself'}")


def check_module(kind: str, module: str, meta: dict[str, str], spec: InstallSpec | None) -> str:
    """The module name as the manifest keeps it ("" for the default, app); refuses what a device could not use."""
    if kind != "app":
        if module or meta:
            raise InvalidArgument(f"--module and --meta apply to app artifacts only; a {kind} is installed by "
                                  f"{'the device bootloader' if kind == 'firmware' else 'the agent itself'}")
        return ""
    if module:
        MODULE_NAME.check(module)
    if module not in ("", DEFAULT_MODULE) and spec is not None:
        raise InvalidArgument(f"an install spec (command, env, health) is for the app module; the {module} module "
                              "takes its settings from --meta k=v")
    if meta and module in ("", DEFAULT_MODULE):
        raise InvalidArgument("--meta is for an update module's settings; give the module with --module NAME "
                              f"(built in: {', '.join(BUILTIN_MODULES)})")
    if len(meta) > MAX_META:
        raise InvalidArgument(f"at most {MAX_META} --meta entries")
    for k, v in meta.items():
        META_KEY.check(k)
        if len(v) > MAX_META_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise InvalidArgument(f"meta {k}: at most {MAX_META_VALUE} characters, no control characters")
    if module in ("file", "directory") and not (meta.get("path") or "").startswith("/"):
        raise InvalidArgument(f"the {module} module needs the absolute destination on the device: "
                              "--meta path=/absolute/path")
    return "" if module == DEFAULT_MODULE else module


def module_of(a: Artifact) -> str:
    """The update module that installs ``a`` (from its signed manifest): app unless the push said otherwise."""
    if a.kind != "app":
        return ""
    if '"module"' not in a.manifest:
        return DEFAULT_MODULE
    return str(json.loads(a.manifest).get("module") or DEFAULT_MODULE)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def build_manifest(*, name: str, version: str, kind: str, sha256: str, size: int, file_name: str,
                   device_types: list[str], install_spec: InstallSpec | None, created: float,
                   image_format: str = "raw", security_counter: int | None = None, module: str = "",
                   meta: dict[str, str] | None = None) -> bytes:
    # Raw artifacts' manifests stay exactly as before (tests/vectors/manifests.json); so do app-module ones.
    extra: dict[str, Any] = {} if image_format == "raw" else {"image_format": image_format,
                                                              "security_counter": security_counter}
    if module and module != DEFAULT_MODULE:
        extra["module"] = module
    if meta:
        extra["meta"] = dict(meta)
    return canonical_json({
        **extra,
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "kind": kind,
        "sha256": sha256,
        "size": size,
        "file_name": file_name,
        "device_types": sorted(device_types),
        "install": msgspec.to_builtins(install_spec) if install_spec else None,
        "created": dt.datetime.fromtimestamp(int(created), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def sign(key: Ed25519PrivateKey, manifest: bytes) -> str:
    return base64.b64encode(key.sign(manifest)).decode()


def _artifact(r: sqlite3.Row) -> Artifact:
    spec = msgspec.json.decode(r["install_spec"], type=InstallSpec) if r["install_spec"] else None
    keys = r.keys()
    manifest = bytes(r["manifest"])
    m = json.loads(manifest) if b'"image_format"' in manifest else {}
    return Artifact(
        id=r["id"], name=r["name"], version=r["version"], kind=r["kind"], device_types=json.loads(r["device_types"]),
        sha256=r["sha256"], size=r["size"], file_name=r["file_name"],
        md5=r["md5"] if "md5" in keys else "", sha1=r["sha1"] if "sha1" in keys else "",
        install_spec=spec, manifest=manifest.decode(), signature=r["signature"],
        offline_signatures=msgspec.json.decode(r["offline_signatures"], type=list[OfflineSignature]),
        created_by=r["created_by"], created_at=to_dt(r["created_at"]), format=m.get("image_format", "raw"),
        security_counter=m.get("security_counter"))


def create(conn: sqlite3.Connection, actor: Actor, signing_key: Ed25519PrivateKey, *, name: str, version: str,
           kind: str, device_types: list[str], sha256: str, size: int, file_name: str,
           install_spec: InstallSpec | None, image_format: str = "raw",
           security_counter: int | None = None, module: str = "", meta: dict[str, str] | None = None) -> Artifact:
    """Record an artifact whose blob is already stored, with its signed manifest."""
    check_metadata(name, version, kind, device_types, file_name)
    if storage.artifact_exists(conn, name, version):
        raise AlreadyExists(f"{name}@{version} already exists; versions are immutable, push a new version")
    if not blobs.is_intact(conn, sha256):
        raise NotFound(f"blob {sha256} is not stored")
    t = now()
    manifest = build_manifest(name=name, version=version, kind=kind, sha256=sha256, size=size, file_name=file_name,
                              device_types=device_types, install_spec=install_spec, created=t,
                              image_format=image_format, security_counter=security_counter, module=module,
                              meta=meta)
    aid = new_id("art")
    storage.insert_artifact(
        conn, artifact_id=aid, name=name, version=version, kind=kind, device_types=json.dumps(sorted(device_types)),
        sha256=sha256, size=size, file_name=file_name,
        install_spec=msgspec.json.encode(install_spec).decode() if install_spec else None, manifest=manifest,
        signature=sign(signing_key, manifest), created_by=actor.name or actor.id, created_at=t)
    audit.record(conn, actor, "artifact.create", aid, name=name, version=version, sha256=sha256, size=size)
    return get(conn, aid)


def get(conn: sqlite3.Connection, ref: str) -> Artifact:
    """By id or NAME@VERSION."""
    if "@" in ref:
        name, _, version = ref.partition("@")
        r = storage.artifact_row_by_version(conn, name, version)
    else:
        r = storage.artifact_row(conn, ref)
    if r is None:
        raise NotFound(_not_found(conn, ref))
    return _artifact(r)


MAX_LISTED_VERSIONS = 10


def _not_found(conn: sqlite3.Connection, ref: str) -> str:
    """What to say about an unknown NAME@VERSION or id: the versions of that name that do exist, newest first."""
    if "@" not in ref:
        return f"no artifact {ref!r} (refer to one as NAME@VERSION or by id; 'fleetd artifacts list')"
    name = ref.partition("@")[0]
    versions = storage.newest_versions(conn, name, MAX_LISTED_VERSIONS + 1)
    if not versions:
        return f"no artifact named {name!r}; 'fleetd artifacts list' shows the names there are"
    more = " …" if len(versions) > MAX_LISTED_VERSIONS else ""
    return (f"no artifact {ref!r}; {name} has {', '.join(versions[:MAX_LISTED_VERSIONS])}{more} "
            f"('fleetd artifacts list --name {name}')")


def list_page(conn: sqlite3.Connection, *, name: str = "", kind: str = "", device_type: str = "", limit: int = -1,
              offset: int = 0) -> tuple[list[Artifact], int]:
    """One page of the artifacts (all filters optional), by name then version precedence, and how many match."""
    rows, total = storage.artifact_rows_page(conn, name=name, kind=kind, device_type=device_type, limit=limit,
                                             offset=offset)
    return [_artifact(r) for r in rows], total


class ArtifactRef(msgspec.Struct, kw_only=True):
    """What a device gets in an install action: where to download and how to verify."""

    name: str
    version: str
    kind: str
    url: str
    sha256: str
    size: int
    file_name: str
    manifest: str
    signature: str
    offline_signatures: list[OfflineSignature] = []


def ref_for_device(a: Artifact, base_url: str) -> ArtifactRef:
    return ArtifactRef(name=a.name, version=a.version, kind=a.kind, url=f"{base_url}/v1/blobs/{a.sha256}",
                       sha256=a.sha256, size=a.size, file_name=a.file_name, manifest=a.manifest,
                       signature=a.signature, offline_signatures=a.offline_signatures)


# --- where an artifact is used, deleting it, offline signatures ------------------

class Deployment(msgspec.Struct, kw_only=True):
    """Where an artifact is used."""

    # Actions that install (or roll back to) it, counted by state.
    actions: dict[str, int] = {}
    open_actions: int = 0
    # Devices that report this version of the component as installed.
    installed_count: int = 0
    # The first of them (up to 100), by id.
    installed_on: list[str] = []


class ArtifactDetail(Artifact, kw_only=True):
    """An artifact with where it is deployed (GetArtifact, and the answer to an upload)."""

    deployment: Deployment = msgspec.field(default_factory=Deployment)


def label(a: Artifact) -> str:
    return f"{a.name}@{a.version}"


def deployment(conn: sqlite3.Connection, a: Artifact) -> Deployment:
    return Deployment(actions=storage.action_counts_by_state(conn, a.id),
                      open_actions=storage.open_action_count(conn, a.id),
                      installed_count=storage.installed_count(conn, a.name, a.version),
                      installed_on=storage.installed_on(conn, a.name, a.version, LISTED_DEVICES))


def detail(conn: sqlite3.Connection, ref: str) -> ArtifactDetail:
    a = get(conn, ref)
    fields = {f: getattr(a, f) for f in a.__struct_fields__}
    return ArtifactDetail(**fields, deployment=deployment(conn, a))


def _some(items: list[str], total: int) -> str:
    return ", ".join(items) + (f" and {total - len(items)} more" if total > len(items) else "")


def delete(conn: sqlite3.Connection, actor: Actor, ref: str) -> Artifact:
    """Forget an artifact no device uses or may roll back to. Its blob goes with the next gc."""
    a = get(conn, ref)
    name = label(a)
    busy = storage.open_actions(conn, a.id)
    if busy:
        listed = [f"{r['id']} on {r['device_id']} ({r['state']})" for r in busy[:5]]
        raise FailedPrecondition(f"{name} has {len(busy)} open action(s): {_some(listed, len(busy))}; "
                                 "wait for them to end or cancel them, then delete")
    used = deployment(conn, a)
    if used.installed_count:
        raise FailedPrecondition(
            f"{name} is installed on {used.installed_count} device(s): "
            f"{_some(used.installed_on[:5], used.installed_count)}; deploy another version to them first")
    fallback = storage.rollback_targets_on(conn, a.name, a.version)
    if fallback:
        raise FailedPrecondition(
            f"{name} is the known-good version that {len(fallback)} device(s) would roll back to: "
            f"{_some(fallback[:5], len(fallback))}; delete it after they have updated past it")
    # Finished actions keep naming what they installed once the row is gone.
    storage.detach_from_actions(conn, a.id, name)
    if not storage.delete_artifact(conn, a.id):
        raise FailedPrecondition(f"{name} is still referenced (by a rollout, for example); remove that first")
    audit.record(conn, actor, "artifact.delete", a.id, name=a.name, version=a.version, sha256=a.sha256)
    return a


def add_offline_signature(conn: sqlite3.Connection, actor: Actor, ref: str, public_key: str,
                          signature: str) -> Artifact:
    """Store a signature over the manifest bytes made with a key the server never holds, once it verifies.

    A second signature by the same key replaces the first.
    """
    a = get(conn, ref)
    pk = decode_b64_field(public_key, "public_key", 32)
    sig = decode_b64_field(signature, "signature", 64)
    if not verify_signature(pk, sig, a.manifest.encode()):
        raise InvalidArgument(f"the signature does not verify with that public key over the manifest of "
                              f"{label(a)}; sign the manifest bytes exactly as GetArtifact returns them "
                              "(fleetd artifacts sign does)")
    entry = OfflineSignature(public_key=base64.b64encode(pk).decode(), signature=base64.b64encode(sig).decode())
    sigs = [s for s in a.offline_signatures if s.public_key != entry.public_key] + [entry]
    if len(sigs) > MAX_OFFLINE_SIGNATURES:
        raise FailedPrecondition(f"{label(a)} already has {MAX_OFFLINE_SIGNATURES} offline signatures, the most "
                                 "an artifact may carry")
    storage.set_offline_signatures(conn, a.id, msgspec.json.encode(sigs).decode())
    audit.record(conn, actor, "artifact.sign", a.id, name=a.name, version=a.version, public_key=entry.public_key)
    return get(conn, a.id)
