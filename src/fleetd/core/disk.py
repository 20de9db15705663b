"""A full disk: the errors that mean it, the answer they become, and what /healthz says about the data dir.

SQLite reports a full disk as SQLITE_FULL ("database or disk is full"), file writes as ENOSPC, or
EDQUOT when a quota is reached. Each becomes ResourceExhausted with the free space in the message
(:func:`full_error`, called by the one error mapping in http/rpc.py), not an internal error.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

from .errors import ResourceExhausted

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def full_error(data_dir: Path, exc: BaseException) -> ResourceExhausted:
    """The answer to a write that failed on a full disk."""
    try:
        free = f"{human(free_bytes(data_dir))} free"
    except OSError:
        free = "free space unknown"
    log.error("a write failed, the disk holding %s is full (%s): %s", data_dir, free, exc)
    return ResourceExhausted(f"the disk holding the data dir {data_dir} is full ({free}); free space or move "
                             "the data dir to a larger disk", retry_after=60)


def health_problems(data_dir: Path, min_free_mib: int, *, db_full: bool, blobs_full: bool) -> list[str]:
    """Why the data dir's disk makes the server degraded; empty when it does not."""
    reasons = []
    if min_free_mib:
        free = free_bytes(data_dir)
        if free < min_free_mib << 20:
            reasons.append(f"the disk holding {data_dir} has {human(free)} free, less than disk_min_free_mib "
                           f"({min_free_mib} MiB)")
    if db_full:
        reasons.append("the last database write failed: the disk is full")
    if blobs_full:
        reasons.append("the last file upload failed: the disk is full")
    return reasons


__all__ = ["free_bytes", "full_error", "health_problems", "human", "is_full"]
