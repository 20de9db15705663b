"""Build the device agent as one file: ``dist/fleet-agent.pyz`` (plus ``dist/fleet-agent-launcher.py``).

    python agent/build_zipapp.py [--source agent/fleet_agent] [--out dist]

The file has the layout ``python -m zipapp`` makes (a ``#!/usr/bin/env python3``
line, then a zip with a ``__main__.py`` that calls ``fleet_agent.cli:main``),
written with zipfile directly because zipapp can neither sort its entries nor
fix their timestamps, and its ``__main__.py`` template ignores the exit status.

The archive holds the ``fleet_agent`` package only: a device brings httpx,
zeroconf and cryptography itself (Raspberry Pi OS: python3-httpx,
python3-zeroconf, python3-cryptography). It is reproducible: entries are
sorted, every timestamp and permission is fixed and ``__pycache__`` is left
out, so the same source always gives the same bytes (and the same ETag and
SHA-256 on the server). Python 3.9+ runs it; this script needs only the
standard library.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import zipfile
from pathlib import Path

ENTRY_POINT = "fleet_agent.cli:main"
INTERPRETER = "/usr/bin/env python3"
ZIPAPP_NAME = "fleet-agent.pyz"
LAUNCHER_NAME = "fleet-agent-launcher.py"
# The earliest time a zip entry can carry; any fixed value would do.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_HERE = Path(__file__).resolve().parent
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}

_MODULE, _FUNCTION = ENTRY_POINT.split(":")
# Unlike zipapp's own template, which drops main()'s return value, the exit status is main()'s: the
# install script and the launcher go by it.
_MAIN_PY = f"""import sys
from {_MODULE} import {_FUNCTION}
sys.exit({_FUNCTION}())
"""


def _package_files(source: Path) -> list[Path]:
    files = []
    for p in source.rglob("*"):
        rel = p.relative_to(source)
        if p.is_dir() or _SKIP_DIRS.intersection(rel.parts) or p.suffix in _SKIP_SUFFIXES:
            continue
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(source).as_posix())


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, whatever the build host
    return info


def archive_bytes(source: Path) -> bytes:
    """The zipapp of package ``source``, shebang line included, byte-for-byte reproducible."""
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"{source} is not a Python package (no __init__.py)")
    if not (source / "cli.py").is_file():
        raise SystemExit(f"{source} has no cli.py, so there is no entry point {ENTRY_POINT}")
    package = source.name
    buf = io.BytesIO()
    # The zip follows the shebang line in the same stream, so its offsets count from the file's start.
    buf.write(b"#!" + INTERPRETER.encode() + b"\n")
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(_entry("__main__.py"), _MAIN_PY.encode())
        for f in _package_files(source):
            z.writestr(_entry(f"{package}/{f.relative_to(source).as_posix()}"), f.read_bytes())
    return buf.getvalue()


def build(source: Path, out_dir: Path) -> Path:
    """Write ``out_dir/fleet-agent.pyz`` (and the launcher, if the package has one); return the zipapp's path.

    Files are written under a temporary name and renamed, so a server serving
    ``out_dir`` never hands out half a file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ZIPAPP_NAME
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(archive_bytes(source))
    tmp.chmod(0o755)
    tmp.replace(target)
    launcher = source / "launcher.py"
    if launcher.is_file():
        tmp = out_dir / (LAUNCHER_NAME + ".tmp")
        shutil.copyfile(launcher, tmp)
        tmp.chmod(0o755)
        tmp.replace(out_dir / LAUNCHER_NAME)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=_HERE / "fleet_agent", help="the fleet_agent package folder")
    parser.add_argument("--out", type=Path, default=_HERE.parent / "dist", help="where to write the files")
    args = parser.parse_args(argv)
    target = build(args.source, args.out)
    print(f"{target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
