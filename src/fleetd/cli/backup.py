"""fleetd backup / fleetd restore: one archive holds a whole data dir."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import JsonOpt, default_data_dir, errors_reported, phase_progress
from .output import console, fail, print_json, print_object

if TYPE_CHECKING:  # loaded by the commands only: `fleetd serve` imports this module too
    from ..store import backup as logic

_PHASES = {"database": "copying the database", "blobs": "copying blobs", "restore": "reading the archive"}


@contextmanager
def _reported() -> Iterator[None]:
    with errors_reported():
        try:
            yield
        except OSError as e:
            fail(str(e))


def _no_postgresql(database: str, what: str) -> None:
    """Refuse an offline command that works on the SQLite file only, when the fleet's database is PostgreSQL."""
    if database:
        from ..core.dsn import redact
        from ..core.errors import FailedPrecondition
        raise FailedPrecondition(
            f"the fleet's database is PostgreSQL ({redact(database)}), and {what} only. Back up and restore a "
            "PostgreSQL fleet with the database's own tools (pg_dump / pg_restore, or your database service's "
            "backups), the data dir (keys, fleetd.toml, blobs/) with your file backups, and an S3 blob store "
            "with its bucket's versioning: docs/operations.md, \"PostgreSQL\". To restore an archive as a SQLite "
            "fleet instead, unset FLEETD_DATABASE (or the database setting).")


def backup(
    out: Annotated[Path, typer.Argument(help="The archive to write: NAME.tar or NAME.tar.gz.", show_default=False)],
    data_dir: Annotated[str | None, typer.Option(help="The data dir to back up (default: $FLEETD_DATA_DIR, "
                                                 "else ./fleetd-data).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    json: JsonOpt = False,
) -> None:
    """Back up a data dir (database, blobs, keys, config) into one archive; safe while the server runs."""
    from ..core.config import load_settings
    from ..store import backup as logic

    with _reported(), phase_progress(not json, _PHASES) as progress:
        where = data_dir or default_data_dir()
        settings = load_settings({"data_dir": where})
        _no_postgresql(settings.database, "fleetd backup copies a SQLite data dir's database")
        blob_store = settings.blob_store  # an S3 bucket's blobs stay in the bucket
        summary = logic.create_backup(where, out, overwrite=force, progress=progress, blob_store=blob_store)
    if json:
        print_json(summary)
        return
    print_object(summary, ["path", "bytes", "blobs", "blob_bytes", "database_bytes", "schema_version",
                           "ca_fingerprint", "created_at", "seconds"])
    if blob_store:
        console.print(f"[yellow]The blobs are in {blob_store}, not in the archive: keep the bucket with its own "
                      "tools (turn on bucket versioning).[/yellow]")
    console.print("[yellow]The archive holds the fleet's private keys: keep it as secret as the data dir.[/yellow]")


def restore(
    archive: Annotated[Path, typer.Argument(help="A backup made by 'fleetd backup'.", show_default=False)],
    data_dir: Annotated[str | None, typer.Option(help="Where to restore to: a new or empty folder.",
                                                 show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="Only check the archive; restore nothing.")] = False,
    json: JsonOpt = False,
) -> None:
    """Restore a backup into a new data dir, checking every file; an older backup is migrated."""
    from ..core.config import load_settings
    from ..store import backup as logic

    if not check and not data_dir:
        fail("pass --data-dir: the new or empty folder to restore into (or --check to only check the archive)")
    with _reported(), phase_progress(not json, _PHASES) as progress:
        if check:
            result: logic.ArchiveInfo | logic.RestoreSummary = logic.check_backup(archive, progress=progress)
        else:
            assert data_dir is not None
            # The new data dir has no fleetd.toml yet: the environment (FLEETD_DATABASE, FLEETD_CONFIG) decides.
            _no_postgresql(load_settings({"data_dir": data_dir}).database,
                           "fleetd restore makes a SQLite data dir from an archive of one")
            result = logic.restore_backup(archive, data_dir, progress=progress)
    if json:
        print_json(result)
        return
    print_object(result)
    if isinstance(result, logic.RestoreSummary):
        console.print(f"[green]Restored.[/green] Start it with: fleetd serve --data-dir {result.data_dir}")
    else:
        console.print("[green]The archive is intact.[/green]")
