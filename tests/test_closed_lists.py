"""One source for each closed list: every other place that names the members is checked against the enum.

The enums are ActionKind and ActionState (devices/actions.py), RolloutState (rollouts/states.py) and Role
(accounts/users.py). Server code uses them directly; the places below cannot import them (SQL, .proto, the web
UI, the agent, the RTOS shim) or keep a part of a list for a reason of their own. Each place says which members
it leaves out on purpose, and why; anything else missing fails, and the message names every such place, so a new
member shows at once everywhere it still has to go.
"""

from __future__ import annotations

import ast
import enum
import functools
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.accounts.users import Role
from fleetd.cli import rollouts as cli_rollouts
from fleetd.cli import sim_engine
from fleetd.ddi import state as ddi_state
from fleetd.devices.actions import DEPLOYING, PROGRESS, SIMPLE, TERMINAL, ActionKind, ActionState
from fleetd.rollouts.states import ACTIVE, ENDED, RolloutState
from fleetd.store.database import migrate

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "src/fleetd/proto/fleetd/v1"
WORD = re.compile(r"[a-z][a-z_]*")
K, S = ActionKind, ActionState


@dataclass(frozen=True)
class Place:
    where: str
    names: Callable[[], set[str]]
    omits: frozenset[str] = frozenset()  # members this place leaves out on purpose (the reason is beside it)
    mixed: bool = False  # the place also lists words of other lists: only missing members count


def _omit(*members: str) -> frozenset[str]:
    return frozenset(str(m) for m in members)


# --- readers ------------------------------------------------------------------------------------

@functools.cache
def _schema() -> dict[str, str]:
    """The effective schema: later migrations may rebuild a table, so read it after all of them ran."""
    conn = sqlite3.connect(":memory:")
    try:
        migrate(conn)
        return {name: sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def sql_check(table: str, column: str) -> Callable[[], set[str]]:
    def names() -> set[str]:
        m = re.search(rf"\b{column}\s+TEXT\b[^,]*?CHECK\s*\(\s*{column}\s+IN\s*\(([^)]*)\)", _schema().get(table, ""))
        return set(re.findall(r"'([^']*)'", m.group(1))) if m else set()
    return names


def proto_comment(file: str, message: str, field: str) -> Callable[[], set[str]]:
    """The words of the comment above ``field`` in ``message`` ("install, rollback, ... or config.")."""
    def names() -> set[str]:
        lines = (PROTO / file).read_text().splitlines()
        start = lines.index(f"message {message} {{")
        for i in range(start + 1, len(lines)):
            if lines[i].startswith("}"):
                return set()
            if re.match(rf"\s*(optional\s+)?string\s+{field}\s*=", lines[i]):
                comment = []
                j = i - 1
                while lines[j].strip().startswith("//"):
                    comment.insert(0, lines[j].strip()[2:])
                    j -= 1
                return set(WORD.findall(" ".join(comment))) - {"or", "and"}
        return set()
    return names


def _js(path: str) -> str:
    return (ROOT / "web" / path).read_text()


def js_const(path: str, name: str) -> Callable[[], set[str]]:
    """The quoted words (or object keys) of ``const NAME = ...;`` in a web module."""
    def names() -> set[str]:
        m = re.search(rf"^const {name} = (.*?);$", _js(path), re.M | re.S)
        if not m:
            return set()
        body = m.group(1)
        return set(re.findall(r"'([a-z_]+)'", body)) | set(re.findall(r"\b([a-z_]+):", body))
    return names


def js_calls(path: str, pattern: str) -> Callable[[], set[str]]:
    def names() -> set[str]:
        return {w for m in re.findall(pattern, _js(path)) for w in re.findall(r"'([a-z_]+)'", m)}
    return names


def agent_dispatch() -> set[str]:
    """The kinds the agent's ``_dispatch`` compares ``kind`` with (the agent cannot import fleetd)."""
    tree = ast.parse((ROOT / "agent/fleet_agent/apps.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_dispatch")
    return {c.value for cmp in ast.walk(fn) if isinstance(cmp, ast.Compare)
            and isinstance(cmp.left, ast.Name) and cmp.left.id == "kind"
            for c in ast.walk(cmp) if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def agent_terminal() -> set[str]:
    tree = ast.parse((ROOT / "agent/fleet_agent/worker.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "TERMINAL" for t in n.targets))
    return {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def shim_kinds() -> set[str]:
    """The kinds the RTOS shim's C sources match (``strcmp(a->kind, "install")``)."""
    return {k for f in sorted((ROOT / "agent/rtos/src").glob("*.c"))
            for k in re.findall(r'strcmp\(\s*\w+(?:->|\.)kind\s*,\s*"([^"]+)"\s*\)', f.read_text())}


def ddi_feedback_states() -> set[str]:
    """The states DDI feedback moves an action to: its ``report(...)`` calls and the execution table."""
    tree = ast.parse((ROOT / "src/fleetd/ddi/feedback.py").read_text())
    found = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id == "report" and n.args and isinstance(n.args[0], ast.Constant)}
    reaches = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "_REACHES" for t in n.targets))
    assert isinstance(reaches, ast.Dict)
    return found | {v.value for v in reaches.values if isinstance(v, ast.Constant)}


def names_of(*items: object) -> Callable[[], set[str]]:
    return lambda: {str(i) for i in items}


# --- the places ---------------------------------------------------------------------------------

PLACES: dict[type[enum.StrEnum], list[Place]] = {
    ActionKind: [
        Place("SQL CHECK actions.kind (migrations)", sql_check("actions", "kind")),
        Place("devices/actions.py DEPLOYING + SIMPLE (every kind is one or the other)",
              names_of(*DEPLOYING, *SIMPLE)),
        Place("proto device.proto DeviceAction.kind comment", proto_comment("device.proto", "DeviceAction", "kind")),
        Place("proto device_admin.proto Action.kind comment", proto_comment("device_admin.proto", "Action", "kind")),
        Place("proto device_admin.proto CreateActionRequest.kind comment",
              proto_comment("device_admin.proto", "CreateActionRequest", "kind"),
              omits=_omit(K.INSTALL)),  # installs come through CreateDeployment
        Place("web/pages/device.js action buttons (simple('KIND', ...), or a control's {kind: 'KIND'})",
              js_calls("pages/device.js", r"(?:simple\(|\{kind: )('[a-z_]+')"),
              omits=_omit(K.INSTALL,  # deployed from the artifact page (CreateDeployment)
                          K.CONFIG)),  # pushed with the CLI or the API; the UI has no config editor
        Place("agent/fleet_agent/apps.py _dispatch", agent_dispatch),
        Place("cli/sim_engine.py (DEPLOYING + DONE)", names_of(*DEPLOYING, *sim_engine.DONE)),
        Place("agent/rtos/src/*.c (the shim's strcmp on kind)", shim_kinds,
              omits=_omit(K.RESTART,  # the shim runs one firmware image: no app to restart
                          K.CONFIG)),  # and keeps no configuration file
        Place("ddi/state.py DEPLOYABLE (what DDI delivers as a deploymentBase)", names_of(*ddi_state.DEPLOYABLE),
              # hawkBit DDI has no such actions: fail_undeliverable ends them as failed
              omits=_omit(K.RESTART, K.REBOOT, K.CONFIG, K.LOGS)),
    ],
    ActionState: [
        Place("devices/actions.py PROGRESS + TERMINAL (every state is open or final)", names_of(*PROGRESS, *TERMINAL)),
        Place("proto device_admin.proto Action.state comment", proto_comment("device_admin.proto", "Action", "state")),
        Place("proto device.proto ReportStatusRequest.state comment",
              proto_comment("device.proto", "ReportStatusRequest", "state"),
              omits=_omit(S.QUEUED, S.OFFERED, S.CANCELLED)),  # set by the server, never reported by a device
        Place("web/ui.js STATE_CLASS (badge colours)", js_const("ui.js", "STATE_CLASS"), mixed=True),
        Place("web/pages/device.js OPEN", js_const("pages/device.js", "OPEN"), omits=_omit(*TERMINAL)),  # open only
        Place("agent/fleet_agent/worker.py TERMINAL", agent_terminal,
              # the final states only; cancelled is the server's (an admin cancels, the agent never reports it)
              omits=_omit(*PROGRESS, S.CANCELLED)),
        Place("ddi/feedback.py (states DDI feedback reaches)", ddi_feedback_states,
              omits=_omit(S.QUEUED, S.OFFERED,  # the server's own
                          S.VERIFYING,  # DDI has no execution for it: the device verifies as part of its download
                          S.ROLLED_BACK,  # a DDI deployment closes with success or failure only
                          S.CANCELLED)),  # a DDI cancel goes through actions.cancel, not a report
    ],
    RolloutState: [
        Place("SQL CHECK rollouts.state (migrations)", sql_check("rollouts", "state")),
        Place("rollouts/states.py ACTIVE + ENDED", names_of(*ACTIVE, *ENDED)),
        Place("proto rollout.proto Rollout.state comment", proto_comment("rollout.proto", "Rollout", "state")),
        Place("cli/rollouts.py STATE_STYLE", names_of(*cli_rollouts.STATE_STYLE)),
        Place("web/ui.js STATE_CLASS (badge colours)", js_const("ui.js", "STATE_CLASS"), mixed=True),
        Place("web/pages/rollouts.js ENDED", js_const("pages/rollouts.js", "ENDED"), omits=_omit(*ACTIVE)),
        Place("web/pages/rollout.js ENDED", js_const("pages/rollout.js", "ENDED"), omits=_omit(*ACTIVE)),
        Place("web/pages/overview.js running rollouts ([...].includes(r.state))",
              js_calls("pages/overview.js", r"(\[[^\]]*\])\.includes\(r\.state\)"), omits=_omit(*ENDED)),
    ],
    Role: [
        Place("SQL CHECK users.role (migrations)", sql_check("users", "role")),
        Place("SQL CHECK api_keys.role (migrations)", sql_check("api_keys", "role")),
        *(Place(f"proto user.proto {m}.role comment", proto_comment("user.proto", m, "role"))
          for m in ("User", "ApiKey", "CreateUserRequest", "CreateKeyRequest")),
        Place("web/app.js RANK", js_const("app.js", "RANK")),
        Place("web/pages/users.js ROLES", js_const("pages/users.js", "ROLES")),
    ],
}


def problems(members: type[enum.StrEnum], places: list[Place]) -> list[str]:
    values = {str(m) for m in members}
    out = []
    for p in places:
        found = p.names()
        missing = sorted(values - p.omits - found)
        unknown = [] if p.mixed else sorted(found - values)
        stale = sorted((p.omits - values) | (p.omits & found))
        if missing:
            out.append(f"{p.where}: lacks {', '.join(missing)}")
        if unknown:
            out.append(f"{p.where}: names {', '.join(unknown)}, not a {members.__name__}")
        if stale:
            out.append(f"{p.where}: its list of omissions is out of date ({', '.join(stale)})")
    return out


@pytest.mark.parametrize("members", list(PLACES), ids=lambda e: e.__name__)
def test_every_place_names_every_member(members: type[enum.StrEnum]) -> None:
    found = problems(members, PLACES[members])
    assert not found, (f"{members.__name__} ({members.__module__}) disagrees with {len(found)} place(s):\n  "
                       + "\n  ".join(found))


def test_an_added_member_is_reported_at_every_place() -> None:
    grown = enum.StrEnum("ActionKind", [*((m.name, m.value) for m in ActionKind), ("FROBNICATE", "frobnicate")])
    found = problems(grown, PLACES[ActionKind])
    assert len(found) == len(PLACES[ActionKind])
    assert all("lacks frobnicate" in f for f in found)
