"""The built-in ``file`` and ``directory`` modules: a file, or a file tree, put in place atomically.

Where: the artifact's metadata ``path`` (``fleetd artifacts push … --module file --meta path=/etc/app.conf``),
an absolute path; ``dest_dir`` is read too, as Mender's directory module names it. Optional ``mode`` (octal,
``file`` only). The previous content is kept beside the destination as ``.<name>.fleet-prev-<token>`` (same
file system, so every switch is one rename); ArtifactRollback puts it back. After a commit it stays until the
next install's commit: one previous version is kept on the device.

``file``: the new file is written beside the destination, synced, and renamed over it (one rename: a power cut
leaves the old file or the new one). The previous is kept as a hard link taken before the rename.
``directory``: the new tree is written beside the destination and synced; then the destination is renamed to the
backup and the new tree to the destination. A cut between the two renames leaves no destination for a moment;
the journal is in ArtifactInstall then, so the agent's start rolls back (the backup renamed back).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..durable import fsync_dir, remove_tree
from ..unpack import sync_tree
from . import Job, ModuleError, ModuleName, UpdateModule, crashpoint


def _destination(job: Job) -> Path:
    raw = job.meta.get("path") or job.meta.get("dest_dir") or ""
    if not raw:
        raise ModuleError(f"the {job.journal['module']} module needs the destination in the artifact's metadata: "
                          "push it with --meta path=/absolute/path")
    p = Path(raw)
    if not p.is_absolute() or ".." in p.parts or p == Path("/"):
        raise ModuleError(f"the destination {raw!r} must be an absolute path without '..', and not /")
    if not p.parent.is_dir():
        raise ModuleError(f"the destination's folder {p.parent} does not exist on this device; create it first")
    return p


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        remove_tree(p)
    else:
        p.unlink(missing_ok=True)


def _backup(job: Job, dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.fleet-prev-{job.journal['token']}")


def _staged(job: Job, dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.fleet-new-{job.journal['token']}")


def _old_backups(job: Job, dest: Path) -> list[Path]:
    keep = _backup(job, dest).name
    return [p for p in dest.parent.glob(f".{dest.name}.fleet-prev-*") if p.name != keep]


class _Placed(UpdateModule):
    """Both modules' one shape: stage the new content beside the destination, keep the previous as the backup,
    switch with one rename; ArtifactRollback renames the backup back. Subclasses say how to check, stage and
    keep."""

    def supports_rollback(self, job: Job) -> bool:
        return True

    def check(self, job: Job, dest: Path) -> None:
        raise NotImplementedError

    def stage(self, job: Job, staged: Path, dest: Path) -> None:
        """Write the new content at ``staged`` (beside ``dest``) and sync it."""
        raise NotImplementedError

    def keep(self, dest: Path, backup: Path) -> None:
        """Keep the previous content as ``backup``."""
        raise NotImplementedError

    def state_Download(self, job: Job) -> None:
        dest = _destination(job)  # refused before anything changes
        job.data["dest"] = str(dest)
        job.data["had_previous"] = dest.exists() or dest.is_symlink()
        self.check(job, dest)

    def state_ArtifactInstall(self, job: Job) -> None:
        dest = Path(job.data["dest"])
        staged, backup = _staged(job, dest), _backup(job, dest)
        if not (backup.exists() and not dest.exists()):  # not already switched halfway (directory)
            self.stage(job, staged, dest)
            if job.data["had_previous"] and not backup.exists():
                self.keep(dest, backup)
        os.replace(staged, dest)
        fsync_dir(dest.parent)

    def state_ArtifactRollback(self, job: Job) -> None:
        if "dest" not in job.data:
            return
        dest = Path(job.data["dest"])
        backup = _backup(job, dest)
        if backup.exists() or backup.is_symlink():
            if dest.is_dir() and not dest.is_symlink():
                remove_tree(dest)  # the new tree: a rename does not replace a folder
            os.replace(backup, dest)
        elif not job.data["had_previous"]:
            _remove(dest)
        fsync_dir(dest.parent)

    def state_ArtifactCommit(self, job: Job) -> None:
        dest = Path(job.data["dest"])
        for p in _old_backups(job, dest):  # one previous is kept: this install's
            _remove(p)

    def state_Cleanup(self, job: Job) -> None:
        if "dest" in job.data:
            _remove(_staged(job, Path(job.data["dest"])))


class FileModule(_Placed):
    name = ModuleName.FILE.value

    def check(self, job: Job, dest: Path) -> None:
        files = [p for p in job.files.iterdir()]
        if len(files) != 1 or not files[0].is_file() or files[0].is_symlink():
            raise ModuleError(f"the file module installs exactly one regular file; this artifact has "
                              f"{len(files)} entries: use the directory module for a tree")
        if dest.is_dir() and not dest.is_symlink():
            raise ModuleError(f"{dest} is a folder on this device; the file module replaces files only")
        mode = job.meta.get("mode", "")
        if mode and not (len(mode) <= 4 and all(c in "01234567" for c in mode)):
            raise ModuleError(f"the metadata mode {mode!r} must be octal permissions such as 0644")

    def stage(self, job: Job, staged: Path, dest: Path) -> None:
        shutil.copyfile(next(job.files.iterdir()), staged)
        mode = job.meta.get("mode", "")
        os.chmod(staged, int(mode, 8) if mode else (dest.stat().st_mode & 0o7777 if dest.exists() else 0o644))
        with open(staged, "rb") as f:
            os.fsync(f.fileno())

    def keep(self, dest: Path, backup: Path) -> None:
        try:  # a hard link: the destination stays in place until the switch replaces it
            os.link(dest, backup, follow_symlinks=False)
        except OSError:  # a file system without hard links
            shutil.copy2(dest, backup, follow_symlinks=False)


class DirectoryModule(_Placed):
    name = ModuleName.DIRECTORY.value

    def check(self, job: Job, dest: Path) -> None:
        if dest.exists() and not dest.is_dir():
            raise ModuleError(f"{dest} is a file on this device; the directory module replaces folders only")

    def stage(self, job: Job, staged: Path, dest: Path) -> None:
        remove_tree(staged)
        shutil.copytree(job.files, staged, symlinks=True)
        sync_tree(staged)

    def keep(self, dest: Path, backup: Path) -> None:
        os.rename(dest, backup)  # a folder cannot be replaced by a rename: it is moved aside first
        crashpoint("mod-directory-switching")


__all__ = ["DirectoryModule", "FileModule"]
