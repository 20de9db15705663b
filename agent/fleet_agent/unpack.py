"""Placing a verified artifact as ``apps/<name>/<version>/``: an archive extracted safely, any other file as-is.

Everything is written into a temp folder, synced, and renamed into place, so a
version folder either is complete or does not exist. Archives may not write
outside their folder: no absolute names, no ``..``, no members inside or over a
symlink the archive made, no symlink that resolves outside (followed through the
archive's other symlinks), hard links only to files the archive wrote before, no
device files, no setuid/setgid bits. The tar check models the whole archive
before writing anything, so it holds on Pythons without ``tarfile.data_filter``.
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
from .names import MANIFEST_FILE, BadName, check_file_name

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


class _Tree:
    """What the archive makes, member by member, so every link is resolved before anything is written.

    Keys are case-folded so that a case-insensitive file system cannot make two names the same path
    behind the check's back. A name that was ever a symlink stays one: nothing may be written over it or
    through it, which keeps the final tree's links the ones every member saw.
    """

    MAX_HOPS = 40  # as the kernel's ELOOP limit

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # symlink path → its target as written
        self.files: set[str] = set()     # regular files (and hard links to them)
        self.dirs: set[str] = {"."}    # folders, given or implied by a member's path

    @staticmethod
    def key(p: PurePosixPath) -> str:
        return str(p).casefold()

    def add(self, m: Any, p: PurePosixPath) -> None:
        for parent in list(p.parents)[:-1]:
            if self.key(parent) in self.links:
                raise UnpackError(f"the archive writes {m.name!r} through a symlink it made")
            self.dirs.add(self.key(parent))
        k = self.key(p)
        if k in self.links:
            raise UnpackError(f"the archive writes {m.name!r} over a symlink it made")
        if m.issym():
            if k in self.files or k in self.dirs:
                raise UnpackError(f"the archive turns {m.name!r} into a symlink after writing it as a file or folder")
            if m.linkname.startswith("/") or "\\" in m.linkname:
                raise UnpackError(f"the archive's symlink {m.name!r} points to an absolute or non-POSIX path")
            self.links[k] = m.linkname
        elif m.islnk():
            target = _check_name(m.linkname)
            if self.key(target) not in self.files:
                raise UnpackError(f"the archive's hard link {m.name!r} must point to a regular file the archive "
                                  f"wrote before it, not {m.linkname!r}")
            self.files.add(k)
        elif m.isdir():
            self.dirs.add(k)
        else:
            self.files.add(k)

    def check_links(self) -> None:
        """Every symlink, followed to the end through the others, stays inside the folder."""
        for k, target in self.links.items():
            if self.resolve(list(PurePosixPath(k).parent.parts), target, 0) is None:
                raise UnpackError(f"the archive's symlink {k!r} resolves outside its folder")

    def resolve(self, at: list[str], target: str, hops: int) -> list[str] | None:
        """The parts of ``target`` read from folder ``at``, following the archive's symlinks; None if outside."""
        if hops > self.MAX_HOPS:
            raise UnpackError("the archive's symlinks form a loop or a chain too long to follow")
        path = [part for part in at if part != "."]
        for part in PurePosixPath(target).parts:
            if part == ".":
                continue
            if part == "..":
                if not path:
                    return None
                path.pop()
                continue
            path.append(part.casefold())
            link = self.links.get("/".join(path))
            if link is not None:
                resolved = self.resolve(path[:-1], link, hops + 1)
                if resolved is None:
                    return None
                path = resolved
        return path


_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID


def _check_tar_members(members: list[Any]) -> None:
    """Refuse, before writing a byte, any member that could land or point outside the folder."""
    tree = _Tree()
    for m in members:
        p = _check_name(m.name)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise UnpackError(f"the archive holds a device, FIFO or other special file: {m.name!r}")
        if m.mode & _SPECIAL_BITS and not m.issym():
            raise UnpackError(f"the archive's {m.name!r} has the setuid or setgid bit; apps may not carry it")
        tree.add(m, p)
    tree.check_links()


def _extract_tar(path: Path, dest: Path) -> None:
    import tarfile

    with tarfile.open(path, "r:*") as tar:
        members = tar.getmembers()
        _check_tar_members(members)
        for m in members:  # files belong to the agent's user, never to the ids the archive names
            m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
            m.mode &= 0o755
        # The filter is a second guard where Python has it; the check above is complete without it.
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


def extract(path: Path, file_name: str, dest: Path) -> None:
    """Extract the archive at ``path`` (its kind from ``file_name``) into the existing folder ``dest``, with every
    check above."""
    if file_name.lower().endswith(ZIP_SUFFIXES):
        _extract_zip(path, dest)
    else:
        _extract_tar(path, dest)


def sync_tree(root: Path) -> None:
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
    """Put the verified file at ``path`` in place as ``app_root/<version>/``; return that folder. ``path`` may
    be a folder instead, holding what the file unpacks to (the update-module sequence unpacked it already): its
    entries are moved in."""
    try:
        file_name = check_file_name(artifact["file_name"])
    except BadName as e:
        raise UnpackError(str(e)) from None
    app_root.mkdir(parents=True, exist_ok=True)
    tmp = app_root / f".{version}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        if path.is_dir():
            for entry in path.iterdir():
                os.replace(entry, tmp / entry.name)  # the same file system: a rename each
        elif is_archive(file_name):
            extract(path, file_name, tmp)
        else:
            shutil.copyfile(path, tmp / file_name)
        if not is_archive(file_name):
            os.chmod(tmp / file_name, 0o755)
        record = {k: artifact[k] for k in ("name", "version", "kind", "sha256", "size", "file_name", "manifest",
                                           "signature")}
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        sync_tree(tmp)
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
