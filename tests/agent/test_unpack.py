"""The agent's archive extraction, on a Python without ``tarfile.data_filter``.

Python before 3.12 (and 3.9.17/3.10.12/3.11.4) has no extraction filters, and the
agent supports 3.9+, so its own check must hold alone: every test here removes the
filter first. Each archive is placed as an app version under ``root/apps``; the
files around it (``root/victim``, ``root/apps/victim``) must never change.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleet_agent.unpack import UnpackError, place

# (name, kind, argument): kind "file" (argument: content), "dir", "sym" / "hard" (argument: link target),
# "fifo", "dev"; an optional fourth item is the mode.
Member = tuple[Any, ...]


@pytest.fixture(autouse=True)
def no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tarfile, "data_filter", raising=False)


def tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, arg, *mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode[0] if mode else (0o755 if kind == "dir" else 0o644)
            data = None
            if kind == "file":
                data = io.BytesIO(arg)
                info.size = len(arg)
            else:
                info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                             "fifo": tarfile.FIFOTYPE, "dev": tarfile.CHRTYPE}[kind]
                info.linkname = arg or ""
            tar.addfile(info, data)
    return buf.getvalue()


def place_archive(root: Path, data: bytes, file_name: str = "app-1.0.0.tar") -> Path:
    path = root / "download" / file_name
    path.write_bytes(data)
    artifact = {"name": "app", "version": "1.0.0", "kind": "app", "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "file_name": file_name, "manifest": "{}", "signature": ""}
    return place(path, root / "apps", "1.0.0", artifact)


def snapshot(root: Path) -> dict[str, Any]:
    """Everything under ``root`` but the placed version folder: kind, link target or bytes, mode."""
    seen: dict[str, Any] = {}
    placed = os.path.join("apps", "1.0.0")
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, root)
            if rel == placed or rel.startswith(placed + os.sep):
                continue
            st_ = os.lstat(p)
            content: Any = os.readlink(p) if os.path.islink(p) else (
                Path(p).read_bytes() if stat.S_ISREG(st_.st_mode) else None)
            seen[rel] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), content)
    return seen


@pytest.fixture()
def root(tmp_path: Path) -> Iterator[Path]:
    yield make_root(tmp_path)


def make_root(base: Path) -> Path:
    (base / "download").mkdir()
    (base / "apps").mkdir()
    (base / "victim").write_bytes(b"safe")
    (base / "apps" / "victim").write_bytes(b"safe")
    return base


def assert_refused(root: Path, members: list[Member], reason: str) -> None:
    before = snapshot(root)
    with pytest.raises(UnpackError) as refused:
        place_archive(root, tar_bytes(members))
    after = snapshot(root)
    after.pop(os.path.join("download", "app-1.0.0.tar"))
    assert after == before, "the refused archive changed files outside its folder"
    assert not (root / "apps" / "1.0.0").exists()
    refused.match(reason)


ESCAPES: dict[str, tuple[list[Member], str]] = {
    # The review's chain: "a/b" is the folder itself, so "c" (lexically "a") is its parent; a hard link
    # through "c" then shares the inode of a file outside, and the next member of that name writes into it.
    "relative symlink chain plus hard link": ([
        ("a", "dir", None), ("a/b", "sym", ".."), ("c", "sym", "a/b/.."),
        ("h", "hard", "c/victim"), ("h", "file", b"pwned")], "hard link 'h' must point to a regular file"),
    "a later symlink makes an earlier one escape": ([
        ("l", "sym", "b/.."), ("b", "sym", "."), ("f", "file", b"x")], "symlink 'l' resolves outside"),
    "hard link to a symlink that escapes": ([
        ("a", "dir", None), ("a/b", "sym", ".."), ("s", "sym", "a/b/../victim"),
        ("h", "hard", "s"), ("h", "file", b"pwned")], "hard link 'h' must point to a regular file"),
    "a file written over an escaping symlink": ([
        ("a", "dir", None), ("a/b", "sym", ".."), ("f", "sym", "a/b/../victim"), ("f", "file", b"pwned")],
        "writes 'f' over a symlink it made"),
    "a folder written over a symlink": ([
        ("d", "sym", "x"), ("d", "dir", None, 0o777)], "writes 'd' over a symlink it made"),
    "a member written through a symlink": ([("d", "sym", "."), ("d/x", "file", b"x")],
                                           "writes 'd/x' through a symlink it made"),
    "a symlink over a folder it wrote into": ([("d/x", "file", b"x"), ("d", "sym", "..")],
                                               "turns 'd' into a symlink"),
    "absolute symlink": ([("etc", "sym", "/etc")], "absolute"),
    "symlink climbing out": ([("up", "sym", "../../..")], "resolves outside"),
    "lexically inside, really outside": ([("here", "sym", "."), ("there", "sym", "here/../x")],
                                         "'there' resolves outside"),
    "symlink loop": ([("a", "sym", "b/x"), ("b", "sym", "a/y")], "loop"),
    "name climbing out": ([("ok/../../evil", "file", b"x")], "climbs out"),
    "absolute name": ([("/tmp/evil", "file", b"x")], "absolute"),
    "hard link climbing out": ([("h", "hard", "../victim"), ("h", "file", b"pwned")], "climbs out"),
    "absolute hard link": ([("h", "hard", "/etc/passwd")], "absolute"),
    "hard link to a folder": ([("d", "dir", None), ("h", "hard", "d")], "must point to a regular file"),
    "fifo": ([("pipe", "fifo", None)], "device, FIFO"),
    "device": ([("null", "dev", None)], "device, FIFO"),
    "setuid": ([("run", "file", b"x", 0o4755)], "setuid or setgid"),
    "setgid folder": ([("d", "dir", None, 0o2755)], "setuid or setgid"),
    "case-folded alias of a symlink": ([("D", "sym", "."), ("d/x", "file", b"x")], "through a symlink"),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_an_archive_that_could_write_or_point_outside_is_refused(root: Path, case: str) -> None:
    members, reason = ESCAPES[case]
    assert_refused(root, members, reason)


@pytest.mark.parametrize("file_name", ["nul\0.bin", "../x", ".fleet-manifest.json", "rlo\u202enib.exe"])
def test_a_file_name_that_is_not_one_safe_file_is_not_written(root: Path, file_name: str) -> None:
    path = root / "download" / "blob"
    path.write_bytes(b"data")
    artifact = {"name": "app", "version": "1.0.0", "kind": "app", "sha256": hashlib.sha256(b"data").hexdigest(),
                "size": 4, "file_name": file_name, "manifest": "{}", "signature": ""}
    with pytest.raises(UnpackError, match="file name"):
        place(path, root / "apps", "1.0.0", artifact)
    assert not (root / "apps" / "app").exists() and not list(root.rglob("x"))


def test_internal_relative_symlinks_and_hard_links_still_work(root: Path) -> None:
    folder = place_archive(root, tar_bytes([
        ("lib/v1/data.txt", "file", b"hello"), ("lib/current", "sym", "v1"),
        ("data", "sym", "lib/current/data.txt"), ("bin", "dir", None), ("bin/data", "sym", "../lib/current/data.txt"),
        ("via", "sym", "lib/current/../v1/./data.txt"), ("copy", "hard", "lib/v1/data.txt"),
        ("run.sh", "file", b"#!/bin/sh\n", 0o775), ("self", "sym", ".")]))
    for name in ("data", "bin/data", "via", "copy", "self/lib/current/data.txt"):
        assert (folder / name).read_bytes() == b"hello", name
    assert stat.S_IMODE((folder / "run.sh").stat().st_mode) == 0o755, "group write is dropped"
    assert (root / "victim").read_bytes() == b"safe"


def test_members_are_owned_by_the_agent_not_by_the_archives_ids(root: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.uid, info.gid, info.uname, info.gname = 0, 0, "root", "root"
        tar.addfile(info, io.BytesIO(b""))
    folder = place_archive(root, buf.getvalue())
    assert (folder / "f").stat().st_uid == os.getuid()


def test_a_zip_cannot_climb_out_and_its_symlink_entries_stay_plain_files(root: Path) -> None:
    for name, reason in (("../evil", "climbs out"), ("/tmp/evil", "absolute")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(name, "x")
        with pytest.raises(UnpackError, match=reason):
            place_archive(root, buf.getvalue(), "app-1.0.0.zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "../victim")
    folder = place_archive(root, buf.getvalue(), "app-1.0.0.zip")
    assert not (folder / "link").is_symlink() and (folder / "link").read_bytes() == b"../victim"


# Generated archives: short names and link targets over a tiny alphabet, so that chains, aliases,
# overwrites and climbs are frequent. Whatever the agent accepts must leave everything outside untouched
# and every link inside.
NAMES = st.sampled_from(["a", "b", "c", "a/b", "victim"])
STEPS = st.sampled_from([".", "..", "a", "b", "c", "victim"])
TARGETS = st.one_of(STEPS, st.tuples(STEPS, STEPS).map("/".join), st.tuples(STEPS, STEPS, STEPS).map("/".join))
MEMBERS = st.one_of(
    st.tuples(NAMES, st.just("file"), st.sampled_from([b"pwned"])),
    st.tuples(NAMES, st.just("dir"), st.none()),
    st.tuples(NAMES, st.just("sym"), TARGETS),
    st.tuples(NAMES, st.just("hard"), TARGETS),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(MEMBERS, min_size=1, max_size=6))
@example([("a", "sym", "."), ("b", "sym", "a/.."), ("c", "hard", "b/victim"), ("c", "file", b"pwned")])
@example([("a", "sym", "."), ("b", "sym", "a/../victim"), ("b", "file", b"pwned")])
def test_generated_archives_never_touch_anything_outside(members: list[Member]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_root(Path(tmp))
        before = snapshot(root)
        try:
            folder: Path | None = place_archive(root, tar_bytes(members))
        except UnpackError:
            folder = None
        after = snapshot(root)
        after.pop(os.path.join("download", "app-1.0.0.tar"))
        assert after == before, f"files outside the folder changed: {members}"
        if folder is not None:
            inside = os.path.realpath(folder)
            for dirpath, dirs, files in os.walk(folder):
                for name in dirs + files:
                    real = os.path.realpath(os.path.join(dirpath, name))
                    assert real == inside or real.startswith(inside + os.sep), (name, members)
