"""No HTTP handler pushes a side effect after a commit: the write records it, and the store runs it.

Walks the handler modules (``*/api.py``, ``*/*_api.py``, ``ddi/routes.py``, ``http/*.py``) and fails on any
call that publishes an event or updates one of the in-memory caches a write keeps in step (the hub's directory,
its open-action set, the DDI state and token index). Such a change is an effect recorded inside the write's
transaction (docs/decisions.md, "Effects run after the commit, recorded by the write").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.both_backends

SRC = Path(__file__).resolve().parents[1] / "src" / "fleetd"

# Methods that publish or change a cache, on whatever object they are called.
MUTATORS = {
    "publish", "deliver", "run_effects", "after_commit",  # the event bus, the store's effect runner
    "set_device", "set_open_actions", "refresh", "device_changed", "device_gone", "actions_open",  # the hub
    "forget_device", "controller_known", "fetched", "installed_base", "config_answered",  # DDI state
    "added", "dropped", "gateway_revoked", "drop_hashes", "drop_id",  # the DDI token index
}
# The caches themselves: changing them in place (a set or dict method, item assignment, del) is a mutation too.
CACHES = {"runtime", "open_actions", "controllers", "config_requested", "watch", "installed", "tokens", "_by_hash"}
IN_PLACE = {"add", "discard", "remove", "pop", "popitem", "update", "difference_update", "clear", "setdefault"}
# A poll's read repair follows a read, not a write: there is no commit to record it in.
ALLOWED = {("ddi/routes.py", "watch.discard")}


def handler_files(root: Path = SRC) -> list[Path]:
    return sorted([*root.glob("*/api.py"), *root.glob("*/*_api.py"), root / "ddi" / "routes.py",
                   *(root / "http").glob("*.py")])


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def violations(files: list[Path]) -> list[str]:
    found: list[tuple[str, int, str]] = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            what = ""
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = _name(node.func.value)
                if node.func.attr in MUTATORS or (owner in CACHES and node.func.attr in IN_PLACE):
                    what = f"{owner}.{node.func.attr}"
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Subscript) and _name(t.value) in CACHES:
                        what = f"{_name(t.value)}[...]"
            where = str(path.relative_to(path.parents[1]))
            if what and (where, what) not in ALLOWED:
                found.append((where, getattr(node, "lineno", 0), what))
    return [f"{file}:{line}: {what}" for file, line, what in sorted(found)]


def test_handlers_publish_nothing_and_update_no_cache() -> None:
    files = handler_files()
    assert len(files) >= 10  # the walk found the handler modules
    assert violations(files) == [], ("record these as effects inside the write (fleetd.store.database.effect); "
                                     "the store runs them after the commit")


def test_the_walk_catches_each_kind_of_mutation(tmp_path: Path) -> None:
    bad = tmp_path / "http_bad.py"
    bad.write_text("async def h(fleet, e):\n"
                   "    fleet.events.publish('x', {})\n"
                   "    fleet.hub.set_device('d', None, None)\n"
                   "    fleet.hub.open_actions.add('d')\n"
                   "    fleet.ddi.controllers['c'] = 'd'\n"
                   "    del fleet.ddi.installed['d']\n"
                   "    fleet.hub.runtime.get('d')\n")  # a read: fine
    assert [v.split(": ")[1] for v in violations([bad])] == [
        "events.publish", "hub.set_device", "open_actions.add", "controllers[...]", "installed[...]"]
