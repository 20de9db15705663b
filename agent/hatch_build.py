"""Hatch build hook: a wheel of fleetd carries the device agent under ``fleetd/_data/agent``.

It builds the zipapp (``build_zipapp.py``) from this source tree at wheel build
time, so a wheel never ships a stale or missing agent, and adds the launcher
and ``install.sh`` beside it. Editable installs are left alone: a source
checkout serves what ``make agent`` put in ``dist/`` (``fleetd.core.resources.agent_file``).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

DEST = "fleetd/_data/agent"


class AgentBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        here = Path(self.root) / "agent"
        spec = importlib.util.spec_from_file_location("build_zipapp", here / "build_zipapp.py")
        assert spec is not None and spec.loader is not None
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        self._tmp = tempfile.mkdtemp(prefix="fleetd-agent-")
        out = Path(self._tmp)
        zipapp = builder.build(here / "fleet_agent", out)
        files = [zipapp, out / builder.LAUNCHER_NAME, here / "install.sh"]
        for f in files:
            if f.is_file():
                build_data["force_include"][str(f)] = f"{DEST}/{f.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
