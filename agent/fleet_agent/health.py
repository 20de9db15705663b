"""An app's health probe from its install spec: an HTTP GET that must answer 2xx, or a command that must exit 0."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import httpx

PROBE_TIMEOUT = 10.0


def probe(health: dict[str, Any], cwd: str, env: dict[str, str]) -> str | None:
    """None when the probe passes, else what it saw."""
    url = health.get("http_url")
    if url:
        try:
            # A local probe: no proxies from the environment, and an app's own certificate is not ours to judge.
            with httpx.Client(timeout=PROBE_TIMEOUT, verify=False, trust_env=False) as c:
                r = c.get(str(url))
        except httpx.HTTPError as e:
            return f"the health URL {url} did not answer: {type(e).__name__}: {e}"
        if not 200 <= r.status_code < 300:
            return f"the health URL {url} answered HTTP {r.status_code}"
        return None
    command = health.get("command") or []
    if command:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
        full_env.update(env)
        try:
            r2 = subprocess.run([str(c) for c in command], cwd=cwd, env=full_env, capture_output=True,
                                timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"the health command {command} did not finish within {PROBE_TIMEOUT:g} s"
        except OSError as e:
            return f"the health command {command} could not run: {e.strerror or e}"
        if r2.returncode != 0:
            tail = (r2.stderr or r2.stdout).decode(errors="replace").strip()[-300:]
            return f"the health command {command} exited with code {r2.returncode}" + (f": {tail}" if tail else "")
    return None
