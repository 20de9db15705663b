"""fleetd artifacts: push, list, show, delete; offline signing keys (keygen, sign); inspect an RTOS image."""

from __future__ import annotations

import base64
import hashlib
import json as jsonlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..artifacts import rtos_image
from ..artifacts.catalog import FORMATS, KINDS, RESTART_POLICIES
from ..core.errors import FailedPrecondition, FleetdError, InvalidArgument
from ..core.fsutil import atomic_write
from .client import Client, RemoteError
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .output import console, err_console, fail, print_json, print_table, show

artifacts_app = typer.Typer(help="Artifacts: push files, list, show, delete; sign them offline.",
                            no_args_is_help=True)

CHUNK = 1 << 20
LIST_COLUMNS = ["id", "name", "version", "kind", "device_types", "size", "created_at"]
SHOW_FIELDS = ["id", "name", "version", "kind", "format", "security_counter", "device_types", "file_name", "size",
               "sha256", "sha1", "md5", "module", "meta", "install_spec", "signature", "offline_signatures",
               "created_by", "created_at"]


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --- push ------------------------------------------------------------------------

def _env_pairs(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _split(text: str, option: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise InvalidArgument(f"cannot parse {option} {text!r}: {e}; quote it as a shell would") from None
    if not words:
        raise InvalidArgument(f"{option} is empty")
    return words


def build_install_spec(spec_file: Path | None, run: str | None, env: list[str], restart: str | None,
                       health_grace: int | None, health_http: str | None, health_cmd: str | None
                       ) -> dict[str, Any] | None:
    """The install spec from --spec (a JSON file) overlaid with the other options; None when none is given."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        try:
            loaded = jsonlib.loads(spec_file.read_text())
        except OSError as e:
            raise InvalidArgument(f"cannot read --spec {spec_file}: {e.strerror}") from None
        except ValueError as e:
            raise InvalidArgument(f"--spec {spec_file} is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise InvalidArgument(f"--spec {spec_file} must hold a JSON object (command, env, working_dir, "
                                  "restart, health)")
        spec = loaded
    if run is not None:
        spec["command"] = _split(run, "--run")
    if env:
        spec["env"] = {**spec.get("env", {}), **_env_pairs(env)}
    if restart is not None:
        if restart not in RESTART_POLICIES:
            raise InvalidArgument(f"--restart must be one of {', '.join(RESTART_POLICIES)}, got {restart!r}")
        spec["restart"] = restart
    if health_grace is not None or health_http is not None or health_cmd is not None:
        health = dict(spec.get("health") or {})
        if health_grace is not None:
            health["grace_seconds"] = health_grace
        if health_http is not None:
            health["http_url"] = health_http
        if health_cmd is not None:
            health["command"] = _split(health_cmd, "--health-cmd")
        spec["health"] = health
    return spec or None


def _chunks(f: BinaryIO, progress: Progress | None, task: Any) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk
        if progress is not None:
            progress.advance(task, len(chunk))


def progress_bar(console: Console = err_console) -> Progress:
    """Bytes sent, rate and time left, on stderr; gone once the upload ends."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)


def put_file(client: Client, upload_path: str, path: Path, size: int, progress: Progress | None = None) -> Any:
    """Stream ``path`` as the body of PUT ``upload_path``, a chunk at a time (flat memory)."""
    import httpx  # not at the top: `fleetd serve` loads this module too

    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    # The answer comes once the server has fsynced the file and recorded it: allow for slow disks.
    timeout = httpx.Timeout(60.0, read=600.0)
    try:
        with path.open("rb") as f:
            if progress is None:
                r = client.http.put(upload_path, content=_chunks(f, None, None), headers=headers, timeout=timeout)
            else:
                with progress:
                    task = progress.add_task(path.name, total=size)
                    r = client.http.put(upload_path, content=_chunks(f, progress, task), headers=headers,
                                        timeout=timeout)
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
    except httpx.HTTPError as e:
        raise RemoteError("unavailable", f"the upload to {client.server} failed: {e or type(e).__name__}; "
                          "run the push again", 503) from None
    if r.status_code not in (200, 201):
        try:
            err = r.json()
        except ValueError:
            raise RemoteError("unknown", f"HTTP {r.status_code}: {r.text[:200]}", r.status_code) from None
        raise RemoteError(err.get("code", "unknown"), err.get("message", r.text), r.status_code)
    return r.json()


def _hint_for(e: FleetdError) -> str | None:
    code = getattr(e, "code", "")
    if code == "already_exists":
        return "Versions are immutable: pass a higher --version."
    if code == "resource_exhausted" and "max_upload_bytes" in e.message:
        return "Set max_upload_bytes in fleetd.toml or FLEETD_MAX_UPLOAD_BYTES on the server."
    return None


@artifacts_app.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="The file to upload.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Component name, e.g. sensor-app.", show_default=False)],
    version: Annotated[str, typer.Option("--version", help="Semantic version, e.g. 1.4.0.", show_default=False)],
    device_type: Annotated[list[str], typer.Option(
        "--device-type", help="Device type it runs on (repeat for several), e.g. linux-aarch64, or a pattern: "
                              "* stands for any run of characters, e.g. 'linux-*' (quote it for the shell).",
        show_default=False)],
    kind: Annotated[str, typer.Option(help=f"{', '.join(KINDS)}.")] = "app",
    run: Annotated[str | None, typer.Option(
        "--run", help="Command that runs the app, shell-quoted, e.g. 'python3 app.py --port 80'.",
        show_default=False)] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the app (repeatable).",
                                                   show_default=False)] = None,
    restart: Annotated[str | None, typer.Option(help="always, on-failure or never.", show_default=False)] = None,
    health_grace: Annotated[int | None, typer.Option(
        "--health-grace", help="Seconds the app must stay healthy after install.", show_default=False)] = None,
    health_http: Annotated[str | None, typer.Option(
        "--health-http", help="URL that must answer 2xx, e.g. http://127.0.0.1:8080/healthz.",
        show_default=False)] = None,
    health_cmd: Annotated[str | None, typer.Option(
        "--health-cmd", help="Command that must exit 0 (shell-quoted).", show_default=False)] = None,
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Install spec as a JSON file; the options above override its fields.",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help=f"{', '.join(FORMATS)}: rtos-image (with --kind firmware) has the server wrap the file "
                         "in a signed RTOS image.")] = "raw",
    security_counter: Annotated[int, typer.Option(
        "--security-counter", help="rtos-image: anti-rollback counter; raise it to revoke older images.")] = 0,
    module: Annotated[str, typer.Option(
        "--module", help="The update module that installs it on Linux devices: app (default), file, directory, "
                         "container, or the name of an external module (docs/agent.md).", show_default=False)] = "",
    meta: Annotated[list[str] | None, typer.Option(
        "--meta", help="k=v for the module, signed into the manifest (repeatable), e.g. path=/etc/app.conf.",
        show_default=False)] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Upload a file as a new artifact version, signed by the server."""
    with errors_reported():
        try:
            install_spec = build_install_spec(spec, run, env or [], restart, health_grace, health_http, health_cmd)
            if not file.is_file():
                raise InvalidArgument(f"{file} is not a readable file" if not file.exists()
                                      else f"{file} is not a regular file")
            size = file.stat().st_size
            body: dict[str, Any] = {"name": name, "version": version, "kind": kind, "device_types": device_type,
                                    "file_name": file.name, "size": size}
            if install_spec is not None:
                body["install_spec"] = install_spec
            if fmt != "raw" or security_counter:
                body.update(format=fmt, security_counter=security_counter)
            if module or meta:
                body.update(module=module, meta=parse_meta(meta or []))
            with remote(server, api_key, ca) as client:
                ticket = client.call("ArtifactService", "CreateUpload", body)
                artifact = put_file(client, f"/v1/uploads/{ticket['upload_id']}", file, size,
                                    progress_bar() if err_console.is_terminal else None)
        except FleetdError as e:
            hint = _hint_for(e)
            if hint:
                fail(f"{e.message} [{e.code}]", hint)
            raise
    if json:
        print_json(artifact)
        return
    show(_readable(artifact), False, SHOW_FIELDS)
    ref = f"{artifact['name']}@{artifact['version']}"
    console.print(f"\npushed {ref} ({human_size(artifact['size'])})", highlight=False)
    console.print(f"[dim]deploy it: fleetd devices deploy DEVICE... {ref}[/dim]", highlight=False)


# --- list, show, delete ---------------------------------------------------------

def parse_meta(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"--meta {item!r} must be KEY=VALUE, e.g. path=/etc/app.conf")
        out[k] = v
    return out


def _readable(a: dict[str, Any]) -> dict[str, Any]:
    """An artifact for a human table: sizes and signatures shortened."""
    out = dict(a)
    manifest = jsonlib.loads(a.get("manifest") or "{}")
    out["module"] = manifest.get("module") or ("app" if a.get("kind") == "app" else None)
    out["meta"] = ", ".join(f"{k}={v}" for k, v in sorted((manifest.get("meta") or {}).items())) or None
    if a.get("format", "raw") == "raw":
        out["format"] = None
    out["size"] = f"{human_size(a['size'])} ({a['size']} bytes)" if a["size"] >= 1024 else f"{a['size']} bytes"
    if a.get("signature"):
        out["signature"] = "ed25519 (fleet key)"
    sigs = a.get("offline_signatures") or []
    out["offline_signatures"] = [f"key {s['public_key']}" for s in sigs] or None
    if a.get("install_spec") is None:
        out["install_spec"] = "none: the file itself is run" if a.get("kind") == "app" else None
    else:
        out["install_spec"] = jsonlib.dumps(a["install_spec"], separators=(", ", ": "))
    return out


@artifacts_app.command("list")
def list_(
    name: Annotated[str, typer.Option(help="Only versions of this component.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many (1-10000).")] = 1000,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """List artifacts, by name then version."""
    with errors_reported():
        answer = call(remote(server, api_key, ca), "ArtifactService", "ListArtifacts", {"name": name, "limit": limit})
    arts = answer["artifacts"]
    if json:
        print_json(arts)
        return
    rows = [{**a, "size": human_size(a["size"])} for a in arts]
    print_table(rows, LIST_COLUMNS, empty="no artifacts yet; add one with 'fleetd artifacts push'")
    if answer.get("total", 0) > len(arts):
        console.print(f"[dim]showing {len(arts)} of {answer['total']}; narrow with --name or raise --limit[/dim]")


@artifacts_app.command("show")
def show_(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or artifact id.", show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Show an artifact: hashes, install spec, signatures and where it is deployed."""
    with errors_reported():
        a = call(remote(server, api_key, ca), "ArtifactService", "GetArtifact", {"id": ref})
    if json:
        print_json(a)
        return
    show(_readable(a), False, SHOW_FIELDS)
    d = a.get("deployment") or {}
    states = ", ".join(f"{k} {v}" for k, v in (d.get("actions") or {}).items()) or "none"
    console.print(f"\n[bold]actions[/bold]       {states} ({d.get('open_actions', 0)} open)")
    installed = d.get("installed_on") or []
    more = d.get("installed_count", 0) - len(installed)
    console.print(f"[bold]installed on[/bold]  {d.get('installed_count', 0)} device(s)"
                  + (f": {', '.join(installed)}" if installed else "") + (f" and {more} more" if more > 0 else ""))


@artifacts_app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or artifact id.", show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Delete an artifact that no device uses (its file is removed by the next blob gc)."""
    with errors_reported():
        a = call(remote(server, api_key, ca), "ArtifactService", "DeleteArtifact", {"id": ref})
    if json:
        print_json(a)
        return
    console.print(f"deleted {a['name']}@{a['version']} ({a['id']})")


# --- offline signing ------------------------------------------------------------

def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_signing_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:  # encrypted and no passphrase given, or the reverse
        if passphrase is not None:
            raise InvalidArgument(f"{path} is not encrypted; leave out the passphrase") from None
        return load_signing_key(path, typer.prompt(f"Passphrase for {path}", hide_input=True))
    except ValueError:
        raise InvalidArgument(f"{path} is not a PEM private key (or the passphrase is wrong); make one with "
                              "'fleetd artifacts keygen --out FILE'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} holds a {type(key).__name__}; offline signing needs an Ed25519 key")
    return key


@artifacts_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Where to write the private key (PEM, mode 0600).",
                                      show_default=False)],
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Protect the key with a passphrase (prompted).")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json: JsonOpt = False,
) -> None:
    """Create an offline Ed25519 signing key; keep it off the server. Prints its public key."""
    with errors_reported():
        if out.exists() and not force:
            raise InvalidArgument(f"{out} already exists; pick another --out or pass --force to replace it")
        algorithm: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if encrypt:
            passphrase = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
            algorithm = serialization.BestAvailableEncryption(passphrase.encode())
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm)
        try:
            atomic_write(out.expanduser().resolve(), pem, 0o600)
        except OSError as e:
            raise InvalidArgument(f"cannot write {out}: {e.strerror}") from None
    pub = public_key_b64(key)
    if json:
        print_json({"path": str(out), "public_key": pub})
        return
    console.print(f"wrote {out} (mode 0600); keep it offline and backed up")
    console.print(f"public key: [bold]{pub}[/bold]")
    console.print("[dim]sign an artifact with it: fleetd artifacts sign NAME@VERSION --key "
                  f"{shlex.quote(str(out))}[/dim]")


def check_manifest(manifest: bytes, artifact: dict[str, Any], local_file: Path | None) -> dict[str, Any]:
    """What is about to be signed, checked against the artifact and, if given, the local file."""
    try:
        m = jsonlib.loads(manifest)
    except ValueError:
        raise FailedPrecondition("the server sent a manifest that is not JSON; refusing to sign it") from None
    if m.get("name") != artifact["name"] or m.get("version") != artifact["version"]:
        raise FailedPrecondition(f"the manifest is for {m.get('name')}@{m.get('version')}, not "
                          f"{artifact['name']}@{artifact['version']}; refusing to sign it")
    if local_file is not None:
        h, size = hashlib.sha256(), 0
        try:
            with local_file.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as e:
            raise InvalidArgument(f"cannot read {local_file}: {e.strerror}") from None
        if h.hexdigest() != m.get("sha256") or size != m.get("size"):
            raise FailedPrecondition(f"{local_file} ({size} bytes, sha256 {h.hexdigest()}) is not the file the server "
                              f"holds ({m.get('size')} bytes, sha256 {m.get('sha256')}); refusing to sign")
    return dict(m)


@artifacts_app.command("sign")
def sign(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION or artifact id.", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private key from 'fleetd artifacts keygen'.",
                                      show_default=False)],
    file: Annotated[Path | None, typer.Option(
        "--file", help="Sign only if the artifact's sha256 and size match this local file.",
        show_default=False)] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Sign an artifact's manifest with an offline key; only the signature is sent, never the key."""
    with errors_reported():
        signing_key = load_signing_key(key)
        with remote(server, api_key, ca) as client:
            a = client.call("ArtifactService", "GetArtifact", {"id": ref})
            manifest = a["manifest"].encode()
            check_manifest(manifest, a, file)
            signature = base64.b64encode(signing_key.sign(manifest)).decode()
            a = client.call("ArtifactService", "AddSignature", {
                "id": a["id"], "public_key": public_key_b64(signing_key), "signature": signature})
    if json:
        print_json(a)
        return
    console.print(f"signed {a['name']}@{a['version']} (sha256 {a['sha256']}) with key "
                  f"[bold]{public_key_b64(signing_key)}[/bold]")
    console.print(f"it now carries {len(a['offline_signatures'])} offline signature(s)")


# --- inspect an RTOS image (offline) -------------------------------------------

def trusted_key(text: str) -> bytes:
    """An Ed25519 public key from 64 hex characters, base64 of 32 bytes, or a file (PEM, hex or base64)."""
    path = Path(text).expanduser()
    if path.is_file():
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY" in data:
                return rtos_image.raw_public_key(load_signing_key(path))
            try:
                pub = serialization.load_pem_public_key(data)
            except ValueError:
                raise InvalidArgument(f"{path} is not a PEM public key") from None
            if not isinstance(pub, Ed25519PublicKey):
                raise InvalidArgument(f"{path} holds a {type(pub).__name__}, not an Ed25519 key")
            return rtos_image.raw_public_key(pub)
        text = data.decode(errors="replace").strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidArgument(f"--key {text[:70]!r} is not an Ed25519 public key: give 64 hex characters, base64 of "
                              "32 bytes (as 'fleetd artifacts show' prints the fleet key), or a PEM file")
    return raw


def inspect_image(path: Path, keys: list[bytes], device_type: str | None, min_counter: int) -> dict[str, Any]:
    """An RTOS image's header, TLVs and signatures, and the shim's verdict (or "unverified" without keys)."""
    out: dict[str, Any] = {"file": str(path)}
    try:
        info, digest = rtos_image.read_image_file(path)
    except OSError as e:
        raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
    except rtos_image.ImageError as e:
        return {**out, "verdict": e.kind, "message": e.message}
    h = info.header
    by_hash = {rtos_image.key_hash(k): i for i, k in enumerate(keys)}
    out.update(size=info.size, format_version=h.format_version, version=h.version,
               security_counter=h.security_counter, device_type=h.device_type, payload_size=h.payload_size,
               sha256=info.sha256.hex(), hash_matches=digest == info.sha256,
               tlvs=[{"type": f"0x{t.type:04x}", "name": t.name, "length": len(t.value)} for t in info.tlvs],
               signatures=[{"key_hash": s.key_hash.hex(),
                            "key": f"--key #{by_hash[s.key_hash] + 1}" if s.key_hash in by_hash else None,
                            "valid": rtos_image.signature_valid(keys[by_hash[s.key_hash]], s.signature, digest)
                            if s.key_hash in by_hash else None} for s in info.signatures])
    try:
        if not keys:
            if digest != info.sha256:
                raise rtos_image.ImageError("hash", "the SHA-256 of header and payload does not match")
            return {**out, "verdict": "unverified", "message": "the hash matches; pass --key to check signatures"}
        rtos_image.check_image(info, digest, keys, device_type, min_counter)
    except rtos_image.ImageError as e:
        return {**out, "verdict": e.kind, "message": e.message}
    return {**out, "verdict": "ok", "message": "the shim would accept it"}


@artifacts_app.command("inspect")
def inspect(
    file: Annotated[Path, typer.Argument(help="An RTOS image (.fdim), e.g. downloaded from the server.",
                                         show_default=False)],
    key: Annotated[list[str] | None, typer.Option(
        "--key", help="A trusted public key (hex, base64 or PEM file), repeatable; without one the signatures "
                      "are listed but not checked.", show_default=False)] = None,
    device_type: Annotated[str | None, typer.Option(
        "--device-type", help="Also check the image is for this device type.", show_default=False)] = None,
    min_counter: Annotated[int, typer.Option(
        "--min-counter", help="Also check the security counter is at least this.")] = 0,
    json: JsonOpt = False,
) -> None:
    """Show an RTOS image's header, TLVs and signatures, and whether it verifies (offline; exit 1 if refused)."""
    with errors_reported():
        report = inspect_image(file, [trusted_key(k) for k in key or []], device_type, min_counter)
    if json:
        print_json(report)
    else:
        show({k: v for k, v in report.items() if k not in ("tlvs", "signatures")}, False)
        if "tlvs" in report:
            print_table(report["tlvs"], ["type", "name", "length"], title="TLVs")
            print_table(report["signatures"], ["key_hash", "key", "valid"], title="signatures",
                        empty="no signatures")
    if report["verdict"] not in ("ok", "unverified"):
        raise typer.Exit(1)


__all__ = ["artifacts_app", "build_install_spec", "check_manifest", "inspect_image", "load_signing_key", "progress_bar",
           "put_file", "trusted_key"]
