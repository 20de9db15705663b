"""The blob store's interface, whichever backend holds the bytes, and the choice of backend from the settings.

``blob_store = ""`` (the default): files under the data dir's ``blobs/`` folder (store/blobs.py, the downloads'
fast path: page-cache reads on the event loop). ``blob_store = "s3://bucket/prefix"``: an S3-compatible bucket
(store/blobs_s3.py; it and httpx are imported only then).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .blobs import READ_CHUNK, BlobInfo, BlobStore, GcReport, ScrubReport
from .database import Store

if TYPE_CHECKING:
    from ..core.config import Settings


class Reader(Protocol):
    """An open blob of either backend: its record, and its bytes a range at a time (the end closes it)."""

    info: BlobInfo

    def chunks(self, start: int = 0, end: int | None = None,
               chunk_size: int = READ_CHUNK) -> AsyncGenerator[bytes | bytearray, None]: ...

    def close(self) -> None: ...


class Blobs(Protocol):
    """What the server asks of a blob store, whichever backend holds the bytes."""

    store: Store
    max_bytes: int
    disk_full: bool

    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo: ...

    async def put_bytes(self, data: bytes) -> BlobInfo: ...

    async def info(self, sha256: str) -> BlobInfo | None: ...

    async def open(self, sha256: str) -> Reader | None: ...

    async def gc(self, grace_seconds: float = 3600) -> GcReport: ...

    async def scrub(self) -> ScrubReport: ...

    def close(self) -> None: ...


def open_blobs(settings: Settings, data_dir: Path, store: Store) -> Blobs:
    """The blob store the settings ask for: the data dir's ``blobs/`` folder, or an S3 bucket (store/s3.py and httpx
    are imported only then)."""
    if settings.blob_store:
        from .blobs_s3 import S3BlobStore
        return S3BlobStore.from_settings(settings, store)
    return BlobStore(data_dir / "blobs", store, settings.max_upload_bytes)

__all__ = ["Blobs", "Reader", "open_blobs"]
