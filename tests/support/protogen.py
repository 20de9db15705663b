"""Generates the protobuf code in src/fleetd/protobuf from the published .proto files.

protoc (bundled in grpcio-tools, a test dependency) writes one ``*_pb2.py`` module per
file under src/fleetd/proto; they are committed, so the server needs only the
``protobuf`` runtime, never protoc. protoc names the modules after the files'
folders (``from fleetd.v1 import common_pb2``); this module puts them side by side in
the fleetd.protobuf package and makes those imports relative. Not imported by the server.

    python -m tests.support.protogen      # or: make proto

tests/http/test_proto_codec.py regenerates into a temporary folder and fails when the
committed modules differ.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fleetd.core.resources import proto_dir

try:
    from grpc_tools import protoc  # type: ignore[import-untyped]
except ImportError as e:
    raise ImportError("tests.support.protogen runs protoc from grpcio-tools, a test dependency: "
                      "pip install -e '.[test]'") from e

COMMAND = "python -m tests.support.protogen"
TARGET = Path(__file__).resolve().parents[2] / "src" / "fleetd" / "protobuf"
_IMPORT = re.compile(r"^from fleetd\.v1 import (\w+_pb2) as ", re.MULTILINE)
# What names the protoc version that wrote a module: the header line and the runtime check under it.
_VERSION = re.compile(r"^# Protobuf Python Version: .*\n"
                      r"|^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    .*\n)*?\)\n", re.MULTILINE)


def generate(source: Path | None = None) -> dict[str, str]:
    """The generated modules, by file name, for the .proto files under ``source`` (the published ones)."""
    source = source or proto_dir()
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        # A child process: protoc writes its errors to file descriptor 2.
        run = subprocess.run([sys.executable, "-m", protoc.__name__, "-I.", f"--python_out={tmp}", *files],
                             cwd=source, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"protoc failed (exit status {run.returncode}):\n{run.stderr}")
        modules = {}
        for path in sorted(Path(tmp).rglob("*_pb2.py")):
            if path.name in modules:
                raise RuntimeError(f"two .proto files generate {path.name}; fleetd.protobuf keeps them in one folder")
            modules[path.name] = _IMPORT.sub(r"from . import \1 as ", path.read_text())
    return modules


def _comparable(text: str | None) -> str | None:
    """A module without the lines naming the protoc version that wrote it (grpcio-tools versions differ)."""
    return None if text is None else _VERSION.sub("", text)


def stale(target: Path = TARGET, source: Path | None = None) -> list[str]:
    """The modules in ``target`` that differ from what the .proto files under ``source`` generate now,
    or are missing, or are left over."""
    fresh = generate(source)
    committed = {p.name: p.read_text() for p in target.glob("*_pb2.py")}
    return sorted(n for n in fresh.keys() | committed.keys()
                  if _comparable(fresh.get(n)) != _comparable(committed.get(n)))


def write(target: Path = TARGET) -> list[str]:
    """Regenerate the modules in ``target``, removing those whose .proto file is gone; the names written."""
    modules = generate()
    for old in target.glob("*_pb2.py"):
        if old.name not in modules:
            old.unlink()
    for name, text in modules.items():
        (target / name).write_text(text)
    return sorted(modules)


if __name__ == "__main__":
    for name in write():
        print(TARGET / name)
