"""The RTOS shim's device-type matching (agent/rtos/src/dtype.c) on the shared vectors, tests/vectors/device_types.txt,
which the server's and the agent's matching follow too (tests/test_vectors.py, tests/agent/test_apps_verify.py).
Needs only a C compiler: `make -C agent/rtos dtype-test` builds and runs agent/rtos/tests/test_dtype.c."""

from __future__ import annotations

import subprocess

from tests.rtos.conftest import RTOS_DIR
from tests.vectors.device_types import matching


def test_the_shim_matches_device_types_as_the_vectors_say() -> None:
    proc = subprocess.run(["make", "-s", "-C", str(RTOS_DIR), "dtype-test"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"device types: {len(matching())} checked, 0 failed" in proc.stdout
