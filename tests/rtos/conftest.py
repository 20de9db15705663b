"""Fixtures for the RTOS shim tests: the host build (made once per session) and signed test images."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

RTOS_DIR = Path(__file__).resolve().parents[2] / "agent" / "rtos"


@pytest.fixture(scope="session")
def shim_build() -> Path:
    """Runs `make -C agent/rtos host` once; returns the host build directory."""
    proc = subprocess.run(["make", "-s", "-C", str(RTOS_DIR), "host"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"make host failed:\n{proc.stdout}\n{proc.stderr}"
    return RTOS_DIR / "build" / "host"


@pytest.fixture(scope="session")
def sim_binary() -> Path:
    """Runs `make -C agent/rtos sim` once; returns build/host/fleet-shim-sim (the shim on the POSIX port)."""
    proc = subprocess.run(["make", "-s", "-C", str(RTOS_DIR), "sim"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"make sim failed:\n{proc.stdout}\n{proc.stderr}"
    return RTOS_DIR / "build" / "host" / "fleet-shim-sim"
