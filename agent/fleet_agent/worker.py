"""Running actions: the executor (apps.py, loaded lazily) on one worker thread, one action at a time.

Without app support (no apps.py, or it fails to load) a :class:`NullExecutor`
stands in, so the agent still checks in and every action fails saying why.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .client import ServerClient
from .config import AgentState, ConfigError, read_json

log = logging.getLogger(__name__)


class Report(Protocol):
    """How an executor reports an action's progress; ``result`` only with a final state that brings one back
    (the lines of a logs action)."""

    def __call__(self, state: str, message: str = "", progress: int = 0,
                 result: dict[str, Any] | None = None) -> None: ...


TERMINAL = frozenset({"succeeded", "failed", "rolled_back", "rejected"})


def installed_apps(state_dir: Path) -> list[dict[str, Any]]:
    """What ``apps/<name>/state.json`` files say (written by the executor), for status and the fallback."""
    out = []
    for f in sorted((state_dir / "apps").glob("*/state.json")):
        try:
            st = read_json(f) or {}
        except ConfigError:
            continue
        out.append({"name": f.parent.name, "version": str(st.get("version", "")), "state": str(st.get("state", "")),
                    "health": str(st.get("health", "")), "restarts": int(st.get("restarts") or 0),
                    "last_error": str(st.get("last_error") or "")})
    return out


class NullExecutor:
    """Stands in when this agent has no app support (apps.py): every action fails, saying so."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def busy(self) -> bool:
        return False

    def execute(self, action: dict[str, Any], report: Report) -> None:
        report("failed", f"this agent cannot run {action.get('kind', '?')} actions yet", 0)

    def components(self) -> list[dict[str, Any]]:
        return [{k: a[k] for k in ("name", "version", "state", "health", "restarts")}
                for a in installed_apps(self.state_dir) if a["version"]]


class LazyExecutor:
    """App support (apps.py and what it imports, about 2 MiB) loaded only when there is something for it to do:
    an app installed or being installed at start, or the first action. An agent that supervises nothing
    stays small (its idle RSS target is 40 MiB)."""

    def __init__(self, state_dir: Path, load: Callable[[], Any]) -> None:
        self.state_dir = state_dir
        self._load = load
        self._real: Any = None
        self._lock = threading.Lock()

    def _executor(self) -> Any:
        with self._lock:
            if self._real is None:
                self._real = self._load()
                self._real.start()
            return self._real

    def start(self) -> None:
        for area in (self.state_dir / "apps", self.state_dir / "updates"):
            if area.is_dir() and any(area.iterdir()):  # apps to bring up, or an install to finish or undo
                self._executor()
                return

    def stop(self) -> None:
        if self._real is not None:
            self._real.stop()

    def busy(self) -> bool:
        return self._real is not None and bool(self._real.busy())

    def execute(self, action: dict[str, Any], report: Report) -> None:
        self._executor().execute(action, report)

    def components(self) -> list[dict[str, Any]]:
        if self._real is not None:
            return list(self._real.components())
        from . import selfupdate  # small; the agent itself is a component once it updated itself

        agent = selfupdate.agent_component(self.state_dir)
        return [agent] if agent is not None else []


def lazy_executor(state_dir: Path, client: ServerClient, state: AgentState) -> LazyExecutor:
    return LazyExecutor(state_dir, lambda: load_executor(state_dir, client, state))


def load_executor(state_dir: Path, client: ServerClient, state: AgentState) -> Any:
    """The app executor (apps.py), imported only now; without it, a NullExecutor."""
    try:
        from .apps import Executor  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.apps":
            log.exception("app support failed to load; running without it")
        return NullExecutor(state_dir)
    except Exception:
        log.exception("app support failed to load; running without it")
        return NullExecutor(state_dir)
    try:
        return Executor(state_dir, client, base64.b64decode(state.signing_public_key), state.device_type)
    except Exception:
        log.exception("app support failed to start; running without it")
        return NullExecutor(state_dir)


class ActionWorker:
    """Runs actions one at a time, in the order they were submitted, on one daemon thread."""

    def __init__(self, executor: Any, make_report: Callable[[dict[str, Any]], Report],
                 on_done: Callable[[str], None]) -> None:
        self.executor = executor
        self.make_report = make_report
        self.on_done = on_done
        self.current: str | None = None
        self.returned: set[str] = set()  # execute() came back without a final state (e.g. a reboot)
        self._pending: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def ids(self) -> set[str]:
        with self._cond:
            busy = {str(a.get("id")) for a in self._pending}
            if self.current:
                busy.add(self.current)
            return busy

    def submit(self, action: dict[str, Any]) -> None:
        with self._cond:
            self._pending.append(action)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fleet-agent-actions", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def drop_missing(self, open_ids: set[str]) -> None:
        """Actions no longer in the check-in answer were cancelled: do not start them."""
        with self._cond:
            for a in list(self._pending):
                if a.get("id") not in open_ids:
                    log.info("action %s was cancelled before it started", a.get("id"))
                    self._pending.remove(a)
            if self.current and self.current not in open_ids:
                log.info("action %s was cancelled on the server while running; its reports will be refused",
                         self.current)

    def idle(self) -> bool:
        with self._cond:
            return not self._pending and self.current is None

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self.current is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                action = self._pending.popleft()
                aid = str(action.get("id"))
                self.current = aid
            try:
                self._execute(aid, action)
            except Exception:  # e.g. a full disk while queueing its report: the thread must live on
                log.exception("action %s: could not record its outcome", aid)
            finally:
                with self._cond:
                    self.current = None
                    self._cond.notify_all()
                self.on_done(aid)

    def _execute(self, aid: str, action: dict[str, Any]) -> None:
        report = self.make_report(action)
        ended: list[str] = []

        def tracking(state: str, message: str = "", progress: int = 0,
                     result: dict[str, Any] | None = None) -> None:
            report(state, message, progress, result)
            if state in TERMINAL:
                ended.append(state)

        try:
            log.info("action %s: %s %s", aid, action.get("kind"), action.get("component") or "")
            self.executor.execute(action, tracking)
            if not ended:
                log.warning("action %s: the executor returned without a final state; it is resumed at the "
                            "agent's next start", aid)
                self.returned.add(aid)
        except Exception as e:
            log.exception("action %s failed in the agent", aid)
            if not ended:
                tracking("failed", f"the agent failed while running this action: {type(e).__name__}: {e}", 0)


__all__ = ["TERMINAL", "ActionWorker", "NullExecutor", "Report", "installed_apps", "load_executor"]
