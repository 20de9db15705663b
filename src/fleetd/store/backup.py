"""Online backup and restore of a data dir as one tar archive.

A backup is one point in time. SQLite's online backup API copies the database
from a separate connection that holds a single read transaction open for the
whole copy: every ``pages=`` step then reads the same snapshot, so the copy never
restarts when the server commits, and in WAL mode the server's writers are never
blocked (they only keep the WAL from being checkpointed past the snapshot until
the copy ends). That snapshot is the truth: exactly the blobs its ``blobs`` table
lists are copied, each checked against its sha256 while it is read. Blobs are
immutable and content-addressed, so copying one after the snapshot is still right.

Archive (``.tar`` or ``.tar.gz``), in this order::

    fleetd.db                       the snapshot, a self-contained (non-WAL) file
    blobs/<sha[:2]>/<sha256>        every blob the snapshot lists
    ca.pem ca.key server.pem ...    the fleet's keys, fleetd.toml if present
    backup.json                     the manifest: versions, time, every file's sha256 and size

The functions are synchronous and do file I/O and hashing: async callers run
them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import os
import re
import secrets
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import msgspec
from cryptography import x509

from .. import __version__
from ..core.config import CONFIG_FILE_NAME
from ..core.errors import AlreadyExists, FailedPrecondition, FleetdError, InvalidArgument
from ..core.fsutil import fsync_dir
from ..core.pki import ca_fingerprint
from .blobs import relative_path
from .database import DB_NAME, available_migrations, connect, migrate

MANIFEST_NAME = "backup.json"
FORMAT_VERSION = 1
SECRET_FILES = ("ca.key", "server.key", "signing.key", "token.key")
PUBLIC_FILES = ("ca.pem", "server.pem", "signing.pub")
KEY_FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "signing.key", "signing.pub", "token.key")
PAGES_PER_STEP = 1024
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 256 << 20
SHA256_RE = re.compile(r"[0-9a-f]{64}")
BLOB_PATH_RE = re.compile(r"blobs/([0-9a-f]{2})/([0-9a-f]{64})")

# (phase, done, total) in bytes; phases: "database", "blobs" (backup), "restore".
Progress = Callable[[str, int, int], None]


class FileEntry(msgspec.Struct, kw_only=True):
    path: str
    sha256: str
    size: int


class Manifest(msgspec.Struct, kw_only=True):
    format: int
    fleetd_version: str
    schema_version: int
    created_at: str
    ca_fingerprint: str | None
    files: list[FileEntry]
    blob_store: str = ""  # the S3 bucket that holds the blobs, not the archive (docs/operations.md, Artifacts in S3)


class BackupSummary(msgspec.Struct, kw_only=True):
    path: str
    bytes: int
    files: int
    blobs: int
    blob_bytes: int
    database_bytes: int
    schema_version: int
    fleetd_version: str
    ca_fingerprint: str | None
    created_at: str
    seconds: float


class ArchiveInfo(msgspec.Struct, kw_only=True):
    """What a checked archive holds (``fleetd restore --check``)."""
    path: str
    files: int
    blobs: int
    bytes: int
    fleetd_version: str
    schema_version: int
    ca_fingerprint: str | None
    created_at: str


class RestoreSummary(msgspec.Struct, kw_only=True):
    data_dir: str
    files: int
    blobs: int
    bytes: int
    backup_created_at: str
    backup_fleetd_version: str
    backup_schema_version: int
    schema_version: int
    migrations_applied: list[str]
    ca_fingerprint: str | None
    seconds: float


def file_mode(path: str) -> int:
    """The mode a restored file gets: public certificates 0644, blobs 0400 (they never change), else 0600."""
    if path in PUBLIC_FILES:
        return 0o644
    return 0o400 if BLOB_PATH_RE.fullmatch(path) else 0o600


def blob_path(sha256: str) -> str:
    return f"blobs/{relative_path(sha256)}"


def _noop(phase: str, done: int, total: int) -> None:
    pass


def _utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _newest_schema(migrations: Path | None) -> int:
    found = available_migrations(migrations)
    return found[-1][0] if found else 0


# --- backup -----------------------------------------------------------------

def create_backup(data_dir: str | Path, out: str | Path, *, overwrite: bool = False,
                  progress: Progress | None = None, blob_store: str = "") -> BackupSummary:
    """Write a consistent backup of ``data_dir`` to ``out`` (``.tar`` or ``.tar.gz``); with a ``blob_store`` (an
    ``s3://`` URL) the blobs are in that bucket and the archive holds none of them.

    Safe while a server runs on the data dir. Refuses (and writes nothing) when a
    blob the database lists is missing or does not match its sha256.
    """
    progress = progress or _noop
    started = time.monotonic()
    src = Path(data_dir).expanduser().resolve()
    out_path = Path(out).expanduser().resolve()
    compressed = _compression(out_path)
    if not (src / DB_NAME).is_file():
        raise FailedPrecondition(f"{src} holds no {DB_NAME}: it is not a fleetd data dir. "
                                 f"Pass the server's data dir with --data-dir.")
    if not out_path.parent.is_dir():
        raise InvalidArgument(f"folder {out_path.parent} does not exist; create it first")
    if out_path.exists() and not overwrite:
        raise AlreadyExists(f"{out_path} already exists; pick a new name or pass --force to replace it")
    keys = _key_files(src)

    with tempfile.TemporaryDirectory(prefix=".fleetd-backup-", dir=out_path.parent) as work:
        snap = Path(work) / DB_NAME
        created = time.time()
        _snapshot_database(src / DB_NAME, snap, progress)
        schema, blobs = _read_snapshot(snap)
        fingerprint = _fingerprint(src / "ca.pem") if "ca.pem" in keys else None
        tmp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0600: the archive holds the fleet's private keys.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as raw:
                with _tar_writer(raw, compressed) as tar:
                    entries = [_add_file(tar, snap, DB_NAME)]
                    entries += [] if blob_store else _add_blobs(tar, src, blobs, progress)
                    entries += [_add_file(tar, src / name, name) for name in keys]
                    manifest = Manifest(format=FORMAT_VERSION, fleetd_version=__version__, schema_version=schema,
                                        created_at=_utc_iso(created), ca_fingerprint=fingerprint, files=entries,
                                        blob_store=blob_store)
                    # Last, so that it can carry every file's hash from a single pass.
                    _add_bytes(tar, MANIFEST_NAME, msgspec.json.format(msgspec.json.encode(manifest)))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(out_path.parent)
    blob_entries = [e for e in entries if e.path.startswith("blobs/")]
    return BackupSummary(
        path=str(out_path), bytes=out_path.stat().st_size, files=len(entries), blobs=len(blob_entries),
        blob_bytes=sum(e.size for e in blob_entries),
        database_bytes=next(e.size for e in entries if e.path == DB_NAME), schema_version=schema,
        fleetd_version=__version__, ca_fingerprint=fingerprint, created_at=manifest.created_at,
        seconds=round(time.monotonic() - started, 3))


def _compression(out: Path) -> bool:
    name = out.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return True
    if name.endswith(".tar"):
        return False
    raise InvalidArgument(f"the backup file name must end in .tar or .tar.gz, got {out.name!r}")


def _key_files(src: Path) -> list[str]:
    present = [name for name in KEY_FILES if (src / name).is_file()]
    if ("ca.pem" in present) != ("ca.key" in present):
        raise FailedPrecondition(f"{src} has only one of ca.pem and ca.key; a backup without both would "
                                 f"not restore the fleet's identity. Restore the missing one first.")
    if (src / CONFIG_FILE_NAME).is_file():
        present.append(CONFIG_FILE_NAME)
    return present


def _snapshot_database(db_path: Path, dest: Path, progress: Progress) -> None:
    src = connect(db_path, readonly=True)
    try:
        # One read transaction for the whole copy (see the module docstring).
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        page = int(src.execute("PRAGMA page_size").fetchone()[0])
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst, pages=PAGES_PER_STEP, progress=lambda _status, remaining, total: progress(
                "database", (total - remaining) * page, total * page))
            # A self-contained file: no -wal beside it, and it opens read-write anywhere.
            dst.execute("PRAGMA journal_mode=DELETE")
            problems = [r[0] for r in dst.execute("PRAGMA integrity_check")]
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()
    if problems != ["ok"]:
        raise FailedPrecondition(f"the copy of {db_path} fails SQLite's integrity check ({'; '.join(problems[:3])}); "
                                 f"the live database may be damaged. No backup was written.")


def _read_snapshot(snap: Path) -> tuple[int, list[tuple[str, int]]]:
    conn = sqlite3.connect(snap)
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        blobs = [(str(sha), int(size)) for sha, size in conn.execute("SELECT sha256, size FROM blobs ORDER BY sha256")]
    except sqlite3.OperationalError as e:
        raise FailedPrecondition(f"the database has no fleetd schema ({e}); is this a fleetd data dir?") from None
    finally:
        conn.close()
    for sha, _ in blobs:
        if not SHA256_RE.fullmatch(sha):
            raise FailedPrecondition(f"the blobs table holds a malformed sha256 {sha!r}; no backup was written")
    return int(row[0] or 0), blobs


class _HashingReader:
    """A read-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None] | None = None) -> None:
        self._f = f
        self._on_read = on_read
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        if self._on_read:
            self._on_read(len(data))
        return data


def _tar_writer(raw: BinaryIO, compressed: bool) -> tarfile.TarFile:
    if compressed:
        tar = tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6)  # noqa: SIM115
    else:
        tar = tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # the default 16 KiB makes big blobs slow
    return tar


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = file_mode(name)
    info.mtime = int(mtime)
    return info


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> FileEntry:
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        reader = _HashingReader(f)
        tar.addfile(_tarinfo(name, st.st_size, st.st_mtime), reader)
    return FileEntry(path=name, sha256=reader.sha256.hexdigest(), size=reader.size)


def _add_blobs(tar: tarfile.TarFile, src: Path, blobs: list[tuple[str, int]],
               progress: Progress) -> list[FileEntry]:
    total = sum(size for _, size in blobs)
    done = 0
    progress("blobs", 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress("blobs", done, total)

    entries = []
    for sha, size in blobs:
        name = blob_path(sha)
        path = src / name
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise FailedPrecondition(
                f"blob {sha} is listed in the database but {path} is missing; no backup was written. "
                f"Upload the artifact that uses it again, or restore the file from an older backup.") from None
        with f:
            st = os.fstat(f.fileno())
            if st.st_size != size:
                raise FailedPrecondition(
                    f"blob {sha} ({path}) is {st.st_size} bytes but the database says {size}: it is damaged. "
                    f"No backup was written; upload the artifact that uses it again, or restore the file "
                    f"from an older backup.")
            reader = _HashingReader(f, advance)
            tar.addfile(_tarinfo(name, size, st.st_mtime), reader)
        actual = reader.sha256.hexdigest()
        if actual != sha:
            raise FailedPrecondition(
                f"blob {sha} ({path}) is damaged: its content hashes to {actual}. No backup was written; "
                f"upload the artifact that uses it again, or restore the file from an older backup.")
        entries.append(FileEntry(path=name, sha256=sha, size=size))
    return entries


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data), time.time()), io.BytesIO(data))


def _fingerprint(ca_pem: Path) -> str | None:
    try:
        return ca_fingerprint(x509.load_pem_x509_certificate(ca_pem.read_bytes()))
    except ValueError:
        return None


# --- reading an archive -------------------------------------------------------

@dataclass
class _Extracted:
    manifest: Manifest
    actual: dict[str, tuple[str, int]]


def _archive_path(archive: str | Path) -> Path:
    path = Path(archive).expanduser().resolve()
    if not path.is_file():
        raise InvalidArgument(f"backup file {path} does not exist")
    return path


def _member_name(archive: Path, member: tarfile.TarInfo) -> str:
    name = member.name
    known = name in (DB_NAME, MANIFEST_NAME, CONFIG_FILE_NAME, *KEY_FILES)
    m = BLOB_PATH_RE.fullmatch(name)
    if not (known or (m and m.group(2).startswith(m.group(1)))):
        raise InvalidArgument(f"{archive} holds an unexpected entry {name!r}: it is not a fleetd backup")
    if not member.isfile():
        raise InvalidArgument(f"{archive}: entry {name!r} is not a regular file: it is not a fleetd backup")
    return name


def _read_archive(archive: Path, dest: Path | None, progress: Progress, *, only_db: bool = False) -> _Extracted:
    """Read every entry, hashing it; write it under ``dest`` (all of them, or only the database)."""
    manifest_bytes: bytes | None = None
    actual: dict[str, tuple[str, int]] = {}
    with archive.open("rb") as raw:
        total = os.fstat(raw.fileno()).st_size
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    name = _member_name(archive, member)
                    if name in actual or (name == MANIFEST_NAME and manifest_bytes is not None):
                        raise InvalidArgument(f"{archive} holds {name!r} twice: it is not a fleetd backup")
                    f = tar.extractfile(member)
                    assert f is not None
                    if name == MANIFEST_NAME:
                        if member.size > MAX_MANIFEST_BYTES:
                            raise InvalidArgument(f"{archive}: {MANIFEST_NAME} is implausibly large")
                        manifest_bytes = f.read()
                        continue
                    target = dest / name if dest is not None and (not only_db or name == DB_NAME) else None
                    actual[name] = _copy_out(f, target, file_mode(name))
                    progress("restore", raw.tell(), total)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise InvalidArgument(f"{archive} is damaged or truncated ({e}); it cannot be restored") from None
    if manifest_bytes is None:
        raise InvalidArgument(f"{archive} has no {MANIFEST_NAME}: it is truncated, damaged, or not a fleetd backup")
    try:
        manifest = msgspec.json.decode(manifest_bytes, type=Manifest)
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"{archive}: {MANIFEST_NAME} is damaged ({e})") from None
    return _Extracted(manifest, actual)


def _copy_out(f: IO[bytes], target: Path | None, mode: int) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    out = None
    if target is not None:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out = os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
    try:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return h.hexdigest(), n


def _check_manifest(archive: Path, got: _Extracted, migrations: Path | None) -> None:
    m = got.manifest
    if m.format > FORMAT_VERSION:
        raise FailedPrecondition(f"{archive} was made by fleetd {m.fleetd_version} in backup format {m.format}; "
                                 f"this fleetd ({__version__}) reads up to format {FORMAT_VERSION}. "
                                 f"Restore it with fleetd {m.fleetd_version} or newer.")
    newest = _newest_schema(migrations)
    if m.schema_version > newest:
        raise FailedPrecondition(
            f"{archive} holds a database at schema version {m.schema_version} (fleetd {m.fleetd_version}); "
            f"this fleetd ({__version__}) knows only up to {newest}. Restore it with fleetd "
            f"{m.fleetd_version} or newer.")
    listed = {e.path: e for e in m.files}
    problems = []
    if DB_NAME not in listed:
        problems.append(f"its manifest lists no {DB_NAME}")
    for path in sorted(listed.keys() - got.actual.keys()):
        problems.append(f"{path} is listed in the manifest but missing")
    for path in sorted(got.actual.keys() - listed.keys()):
        problems.append(f"{path} is not listed in the manifest")
    for path, (sha, size) in sorted(got.actual.items()):
        e = listed.get(path)
        if e is None:
            continue
        if (sha, size) != (e.sha256, e.size):
            problems.append(f"{path} does not match the manifest (sha256 {sha}, {size} bytes; "
                            f"expected {e.sha256}, {e.size} bytes)")
        elif (bm := BLOB_PATH_RE.fullmatch(path)) and bm.group(2) != sha:
            problems.append(f"{path} does not hash to its name")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InvalidArgument(f"{archive} is damaged, nothing was restored: {'; '.join(problems[:3])}{more}")


def _check_database(archive: Path, db_path: Path, got: _Extracted, migrations: Path | None) -> None:
    """The database itself: intact, not newer than we know, and every blob it lists is in the archive."""
    conn = sqlite3.connect(db_path)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise InvalidArgument(f"{archive}: the database fails SQLite's integrity check "
                                  f"({'; '.join(problems[:3])}); nothing was restored")
        version = int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
        shas = [r[0] for r in conn.execute("SELECT sha256 FROM blobs")]
    except sqlite3.DatabaseError as e:
        raise InvalidArgument(f"{archive}: the database cannot be read ({e}); nothing was restored") from None
    finally:
        conn.close()
    newest = _newest_schema(migrations)
    if version > newest:
        raise FailedPrecondition(f"{archive} holds a database at schema version {version}; this fleetd "
                                 f"({__version__}) knows only up to {newest}. Restore it with a newer fleetd.")
    missing = [s for s in shas if blob_path(str(s)) not in got.actual]
    if missing and not got.manifest.blob_store:
        raise InvalidArgument(f"{archive} is incomplete: the database lists {len(missing)} blob(s) the archive "
                              f"lacks, e.g. {missing[0]}; nothing was restored")


def check_backup(archive: str | Path, *, progress: Progress | None = None,
                 migrations: Path | None = None) -> ArchiveInfo:
    """Read a whole archive and check it as a restore would, without restoring anything."""
    path = _archive_path(archive)
    with tempfile.TemporaryDirectory(prefix="fleetd-check-") as work:
        got = _read_archive(path, Path(work), progress or _noop, only_db=True)
        _check_manifest(path, got, migrations)
        _check_database(path, Path(work) / DB_NAME, got, migrations)
    m = got.manifest
    return ArchiveInfo(path=str(path), files=len(got.actual), blobs=_count_blobs(got),
                       bytes=sum(size for _, size in got.actual.values()), fleetd_version=m.fleetd_version,
                       schema_version=m.schema_version, ca_fingerprint=m.ca_fingerprint, created_at=m.created_at)


def _count_blobs(got: _Extracted) -> int:
    return sum(1 for p in got.actual if p.startswith("blobs/"))


# --- restore --------------------------------------------------------------------

def _require_empty(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FailedPrecondition(f"{target} is a file; restore into a new or empty folder")
    if any(target.iterdir()):
        raise FailedPrecondition(
            f"{target} is not empty; a restore never overwrites a data dir. Restore into a new or empty "
            f"folder (e.g. --data-dir {target}-restored), or move the old one aside first.")


def restore_backup(archive: str | Path, data_dir: str | Path, *, progress: Progress | None = None,
                   migrations: Path | None = None) -> RestoreSummary:
    """Restore ``archive`` into ``data_dir``, which must not exist or be empty.

    Everything is checked against the manifest before anything becomes visible:
    the files are written into a temp folder beside the target, the database is
    checked and migrated to this fleetd's schema, and the folder is renamed into
    place. On any failure nothing is left behind.
    """
    started = time.monotonic()
    path = _archive_path(archive)
    target = Path(data_dir).expanduser().resolve()
    _require_empty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))  # 0700
    try:
        got = _read_archive(path, work, progress or _noop)
        _check_manifest(path, got, migrations)
        _check_database(path, work / DB_NAME, got, migrations)
        conn = connect(work / DB_NAME)
        try:
            applied = migrate(conn, migrations)
            schema = int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
        finally:
            conn.close()
        os.chmod(work / DB_NAME, 0o600)
        (work / "blobs").mkdir(mode=0o700, exist_ok=True)
        _fsync_tree(work)
        _require_empty(target)
        try:
            # rename(2) replaces an empty directory atomically and fails on a non-empty one.
            os.rename(work, target)
        except OSError as e:
            raise FleetdError(f"could not move the restored data dir into place at {target}: {e}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    m = got.manifest
    return RestoreSummary(
        data_dir=str(target), files=len(got.actual), blobs=_count_blobs(got),
        bytes=sum(size for _, size in got.actual.values()), backup_created_at=m.created_at,
        backup_fleetd_version=m.fleetd_version, backup_schema_version=m.schema_version, schema_version=schema,
        migrations_applied=applied, ca_fingerprint=m.ca_fingerprint, seconds=round(time.monotonic() - started, 3))


def _fsync_tree(root: Path) -> None:
    """fsync every folder under ``root`` (files were fsynced as they were written)."""
    for folder, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(Path(folder))


__all__ = [
    "ArchiveInfo",
    "BackupSummary",
    "Manifest",
    "RestoreSummary",
    "check_backup",
    "create_backup",
    "restore_backup",
]
