"""Placing a verified artifact as ``apps/<name>/<version>/``: an archive extracted safely, any other file as-is.

Everything is written into a temp folder, synced, and renamed into place, so a
version folder either is complete or does not exist. Archives may not write
outside their folder: no absolute names, no ``..``, no members inside a
symlink the archive made, no links that resolve outside, no device files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .durable import fsync_dir, remove_tree

MANIFEST_FILE = ".fleet-manifest.json"
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
ZIP_SUFFIXES = (".zip",)


class UnpackError(Exception):
    pass


def is_archive(file_name: str) -> bool:
    return file_name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def _check_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnpackError(f"the archive holds an absolute or non-POSIX path {name!r}")
    if ".." in p.parts:
        raise UnpackError(f"the archive holds a path that climbs out of its folder: {name!r}")
    if p.parts and p.parts[0] == "." and len(p.parts) > 1:
        p = PurePosixPath(*p.parts[1:])
    if str(p) == MANIFEST_FILE:
        raise UnpackError(f"the archive may not contain {MANIFEST_FILE} at its top (the agent's own record)")
    return p


def _extract_tar(path: Path, dest: Path) -> None:
    import tarfile

    with tarfile.open(path, "r:*") as tar:
        members = tar.getmembers()
        links: set[PurePosixPath] = set()
        for m in members:
            p = _check_name(m.name)
            if any(parent in links for parent in p.parents):
                raise UnpackError(f"the archive writes {m.name!r} through a symlink it made")
            if m.isdev() or m.isfifo():
                raise UnpackError(f"the archive holds a device or FIFO: {m.name!r}")
            if m.issym():
                if m.linkname.startswith("/"):
                    raise UnpackError(f"the archive's symlink {m.name!r} points to an absolute path")
                target = os.path.normpath(os.path.join(str(p.parent), m.linkname))
                if target == ".." or target.startswith("../"):
                    raise UnpackError(f"the archive's symlink {m.name!r} points outside its folder")
                links.add(p)
            elif m.islnk():
                _check_name(m.linkname)
        kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=members, **kwargs)
        except (tarfile.TarError, OSError) as e:
            raise UnpackError(f"cannot extract the archive: {e}") from None
    _check_links(dest)


def _check_links(dest: Path) -> None:
    """Every symlink, followed to the end, stays inside ``dest``."""
    root = os.path.realpath(dest)
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    raise UnpackError(f"the archive's symlink {os.path.relpath(p, dest)!r} resolves outside its "
                                      "folder")


def _extract_zip(path: Path, dest: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                _check_name(info.filename)
            for info in infos:
                target = Path(z.extract(info, dest))
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir() and not stat.S_ISLNK(info.external_attr >> 16):
                    os.chmod(target, mode)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnpackError(f"cannot extract the archive: {e}") from None


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(folder))


def place(path: Path, app_root: Path, version: str, artifact: dict[str, Any],
          after_unpack: Callable[[], None] | None = None) -> Path:
    """Put the verified file at ``path`` in place as ``app_root/<version>/``; return that folder."""
    file_name = str(artifact["file_name"])
    app_root.mkdir(parents=True, exist_ok=True)
    tmp = app_root / f".{version}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        if file_name.lower().endswith(ZIP_SUFFIXES):
            _extract_zip(path, tmp)
        elif is_archive(file_name):
            _extract_tar(path, tmp)
        else:
            shutil.copyfile(path, tmp / file_name)
            os.chmod(tmp / file_name, 0o755)
        record = {k: artifact[k] for k in ("name", "version", "kind", "sha256", "size", "file_name", "manifest",
                                           "signature")}
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        _sync_tree(tmp)
        if after_unpack is not None:
            after_unpack()
        final = app_root / version
        remove_tree(final)
        os.replace(tmp, final)
        fsync_dir(app_root)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
