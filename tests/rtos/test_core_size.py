"""`make -C agent/rtos size`: the Cortex-M4 cross-build stays within the issue's targets, and the core needs
nothing from libc beyond string.h and has no static data. Needs gcc-arm-none-eabi (installed by .ci/run)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.rtos.conftest import RTOS_DIR

CORE = ["image", "dtype", "state", "swap", "boot", "update", "crc32", "bytes"]

@pytest.fixture(scope="module")
def size_output() -> str:
    proc = subprocess.run(["make", "-s", "-C", str(RTOS_DIR), "size"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sizes_within_targets(size_output: str) -> None:
    last = size_output.strip().splitlines()[-2:]
    assert re.fullmatch(r"core \.text \d+", last[0]) and re.fullmatch(r"core\+protocol \.text \d+", last[1]), last
    core, total = (int(line.split()[-1]) for line in last)
    assert 1000 < core <= 6 * 1024
    assert core <= total <= 14 * 1024
    ram = re.search(r"static RAM \(\.data\+\.bss\): (\d+) bytes", size_output)
    assert ram and int(ram.group(1)) <= 1024


def test_core_uses_only_string_h_and_no_static_data(size_output: str) -> None:
    objs = [str(RTOS_DIR / "build" / "arm" / f"{name}.o") for name in CORE]
    nm = subprocess.run(["arm-none-eabi-nm", *objs], capture_output=True, text=True, check=True).stdout
    undefined = {line.split()[-1] for line in nm.splitlines() if re.match(r"\s+U ", line)}
    external = {s for s in undefined if not s.startswith("fleet_")}
    assert external <= {"memcpy", "memset", "memcmp", "strcmp"}, external
    data = {line.split()[-1] for line in nm.splitlines() if re.match(r"[0-9a-f]+ [bBdDcC] ", line)}
    assert not data, f"static data in the core: {data}"
