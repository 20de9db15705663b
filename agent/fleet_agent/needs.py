"""The libraries the agent needs besides the standard library, and what to install when one is missing."""

from __future__ import annotations

import importlib.util
import sys

# Module -> its Debian and Raspberry Pi OS package (for the system's /usr/bin/python3).
PACKAGES = {"httpx": "python3-httpx", "zeroconf": "python3-zeroconf", "cryptography": "python3-cryptography"}


def missing() -> list[str]:
    """The needed modules this Python cannot find (found without importing them)."""
    return [m for m in PACKAGES if importlib.util.find_spec(m) is None]


def install_hint(modules: list[str]) -> str:
    """What to run so that ``modules`` can be imported, by package name."""
    modules = [m for m in modules if m in PACKAGES] or list(PACKAGES)
    return (f"{sys.executable} cannot import {', '.join(modules)}. On Debian and Raspberry Pi OS: "
            f"sudo apt install {' '.join(PACKAGES[m] for m in modules)} (for /usr/bin/python3); with another "
            f"Python: {sys.executable} -m pip install {' '.join(modules)}")
