"""fleetd store migrate: move a SQLite fleet into PostgreSQL and an S3 bucket (docs/scaling.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, default_data_dir, errors_reported, phase_progress
from .output import console, fail, print_json, print_table

store_app = typer.Typer(help="The fleet's stores: move a fleet from its data dir to PostgreSQL and S3.",
                        no_args_is_help=True)

_PHASES = {"database": "copying the database (tables)", "blobs": "copying blobs"}


@contextmanager
def _stopped(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock (the one `fleetd serve` holds) for the final copy: the old server must be stopped,
    and cannot start until the copy is over."""
    from ..fleet import DataDirLocked, lock_data_dir
    try:
        fd = lock_data_dir(data_dir)
    except DataDirLocked:
        fail(f"a fleetd server is running on {data_dir}", "Stop it first: the final copy must see everything it "
             "wrote. (Run without --final to copy while it runs.)")
    try:
        yield
    finally:
        os.close(fd)


@store_app.command("migrate")
def migrate_command(
    to: Annotated[str, typer.Option("--to", help="The PostgreSQL database: postgresql://USER@HOST:PORT/DB.",
                                    show_default=False)],
    source: Annotated[str | None, typer.Option("--from", help="The data dir to move (default: $FLEETD_DATA_DIR, "
                                               "else ./fleetd-data).", show_default=False)] = None,
    blob_store: Annotated[str | None, typer.Option(
        "--blob-store", help="The bucket for the blobs: s3://BUCKET/prefix (credentials from AWS_* as for "
        "`fleetd serve`). Without it the blobs stay in the data dir.", show_default=False)] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="The S3 endpoint (default: AWS_ENDPOINT_URL_S3, "
                                                    "AWS_ENDPOINT_URL, else AWS).", show_default=False)] = None,
    s3_region: Annotated[str | None, typer.Option(help="The bucket's region.", show_default=False)] = None,
    s3_ca_bundle: Annotated[str | None, typer.Option(help="CA certificates for the endpoint's TLS.",
                                                     show_default=False)] = None,
    key_encryption_key_file: Annotated[str, typer.Option(
        help="The key encryption key the new servers use (default: FLEETD_KEY_ENCRYPTION_KEY; docs/operations.md, "
        "'Replicas: shared state and keys').", show_default=False)] = "",
    final: Annotated[bool, typer.Option("--final", help="The last copy, with the old server stopped: also read "
                                        "every blob back and check its SHA-256.")] = False,
    json: JsonOpt = False,
) -> None:
    """Copy a fleet (database, keys, blobs) into PostgreSQL and an S3 bucket; safe to re-run.

    Run it once while the old server runs, stop the old server, run it again with --final, then start the new
    servers with --database and --blob-store. Devices keep working: same CA, keys and tokens.
    """
    from ..store import transfer
    from ..store.database import DB_NAME, is_dsn

    if not is_dsn(to):
        fail("--to must be a PostgreSQL DSN: postgresql://USER@HOST:PORT/DATABASE")
    data_dir = Path(source or default_data_dir()).expanduser().resolve()
    if not (data_dir / DB_NAME).is_file():
        fail(f"{data_dir} holds no fleet ({DB_NAME} is missing)", "Pass the old server's data dir with --from.")
    bucket = transfer.Bucket(blob_store, s3_endpoint, s3_region, s3_ca_bundle) if blob_store else None
    with errors_reported(), phase_progress(not json, _PHASES, in_bytes=False) as progress, \
            (_stopped(data_dir) if final else contextlib.nullcontext()):
        summary = transfer.migrate_fleet(data_dir, to, bucket, final=final, progress=progress,
                                         key_encryption_key_file=key_encryption_key_file)
    if json:
        print_json(summary)
        return
    rows = [{"table": name, "rows": t.rows, "written": t.written, "deleted": t.deleted}
            for name, t in summary.tables.items()]
    print_table(rows, ["table", "rows", "written", "deleted"], title=f"Database (schema {summary.schema_version})")
    if blob_store:
        console.print(f"Blobs: {summary.blobs} listed, {summary.blobs_uploaded} uploaded "
                      f"({summary.blob_bytes_uploaded:,} bytes), {summary.blobs_verified} verified by SHA-256.")
    else:
        console.print("[yellow]Blobs were not copied (no --blob-store): a server on this database needs this data "
                      "dir's blobs/ folder.[/yellow]")
    console.print(f"Keys: in the database, sealed; CA fingerprint {summary.ca_fingerprint} (devices pin it).")
    console.print(f"Done in {summary.seconds:g} s." + ("" if final else
                  " Stop the old server and run this again with --final before starting the new servers."))
