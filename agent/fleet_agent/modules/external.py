"""External update modules: an executable in the modules directory, called as Mender's Update Module protocol v3
calls one: ``<module> <State> <tree>``, with the File Tree as its working directory (docs/agent.md has the
conformance table, which tests/agent/test_modules_conformance.py checks against this file).

Exit code 0 is success, any other a failure of that state. The queries answer on stdout: NeedsArtifactReboot
``No`` (or nothing), ``Yes`` or ``Automatic``; SupportsRollback ``No`` (or nothing) or ``Yes``. Anything else
is refused with the answer quoted. Each call's stdout and stderr go to ``updates/<name>/module.log``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from . import Job, ModuleError, Reboot, State, UpdateModule

# Seconds a state may take (an OS image may take long) and a query may take.
STATE_TIMEOUT = 3600.0
QUERY_TIMEOUT = 60.0
TAIL = 600  # characters of stderr a failure message quotes

# The v3 protocol, as this agent implements it: every state and query it calls a module with.
CALLED = (State.DOWNLOAD, State.ARTIFACT_INSTALL, State.NEEDS_ARTIFACT_REBOOT, State.ARTIFACT_REBOOT,
          State.ARTIFACT_VERIFY_REBOOT, State.ARTIFACT_COMMIT, State.SUPPORTS_ROLLBACK, State.ARTIFACT_ROLLBACK,
          State.ARTIFACT_ROLLBACK_REBOOT, State.ARTIFACT_VERIFY_ROLLBACK_REBOOT, State.ARTIFACT_FAILURE,
          State.CLEANUP)
# The File Tree entries it writes (relative to the tree).
TREE_FILES = ("version", "current_artifact_name", "current_artifact_group", "current_device_type",
              "header/artifact_name", "header/artifact_group", "header/payload_type", "header/header-info",
              "header/type-info", "header/meta-data", "files", "tmp")


class ExternalModule(UpdateModule):
    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.name = exe.name

    def _run(self, arg: str, job: Job, timeout: float) -> str:
        log = job.tree.parent / "module.log"
        started = time.monotonic()
        try:
            p = subprocess.run([str(self.exe), arg, str(job.tree)], cwd=str(job.tree), capture_output=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ModuleError(f"module {self.name} {arg} did not finish within {timeout:g} s") from None
        except OSError as e:
            raise ModuleError(f"cannot run module {self.exe}: {e.strerror}") from None
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        with open(log, "a") as f:
            f.write(f"--- {self.name} {arg}: exit {p.returncode} after {time.monotonic() - started:.1f} s\n"
                    f"{out}{err}")
        if p.returncode != 0:
            tail = err.strip()[-TAIL:] or out.strip()[-TAIL:]
            raise ModuleError(f"module {self.name} {arg} exited with code {p.returncode}"
                              + (f": {tail}" if tail else ""))
        return out

    def call(self, state: State, job: Job) -> None:
        if state is State.CLEANUP and not os.path.isdir(job.tree):
            return
        self._run(state.value, job, STATE_TIMEOUT)

    def _query(self, state: State, job: Job, answers: tuple[str, ...]) -> str:
        answer = self._run(state.value, job, QUERY_TIMEOUT).strip()
        if answer == "":
            return "No"
        if answer not in answers:
            raise ModuleError(f"module {self.name} answered {answer[:80]!r} to {state.value}; the v3 protocol "
                              f"allows {', '.join(answers)}")
        return answer

    def needs_reboot(self, job: Job) -> Reboot:
        return Reboot(self._query(State.NEEDS_ARTIFACT_REBOOT, job, ("No", "Yes", "Automatic")))

    def supports_rollback(self, job: Job) -> bool:
        return self._query(State.SUPPORTS_ROLLBACK, job, ("No", "Yes")) == "Yes"


__all__ = ["CALLED", "TREE_FILES", "ExternalModule"]
