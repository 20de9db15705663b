"""One lifecycle: every background part is in the Fleet's one list, started in order and stopped in reverse by the
app's lifespan; no module keeps a registry of Fleet objects (docs/architecture.md, "Background parts")."""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.core.lifecycle import SCOPES
from fleetd.fleet import Fleet

SRC = Path(__file__).resolve().parents[1] / "src" / "fleetd"
# Client-side tools (the CLI, the device simulator) run no server parts.
NOT_SERVER = ("cli",)
# The parts of PostgreSQL replicas only (store/lease.py, store/changes.py; tests/test_replicas.py lists them).
REPLICAS_ONLY = {"FleetLease", "ChangeFeed"}


def _server_modules() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if p.relative_to(SRC).parts[0] not in NOT_SERVER]


def background_classes() -> set[str]:
    """Every server class with an ``async def stop(self)``: something to stop at shutdown is a background part."""
    found = set()
    for path in _server_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and "Protocol" not in map(ast.unparse, node.bases) and any(
                    isinstance(f, ast.AsyncFunctionDef) and f.name == "stop" and len(f.args.args) == 1
                    for f in node.body):
                found.add(node.name)
    return found


@pytest.fixture
def advertising(tmp_path: Path) -> Settings:
    # Port 0 cannot be advertised: the mDNS part fails at once in the background, on no network, as startup goes on.
    # No broker listens on port 1: the MQTT part tries to connect in the background, and stops when told.
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=True, host="127.0.0.1", port=0,
                    mqtt_url="mqtts://127.0.0.1:1")


def test_the_fleet_lists_every_background_part_once_with_a_scope(advertising: Settings) -> None:
    fleet = Fleet(advertising)
    try:
        parts = fleet.parts
        kinds = [type(p).__name__ for p in parts]
        assert sorted(kinds) == sorted(background_classes() - REPLICAS_ONLY), \
            "a background part is missing from Fleet.parts"
        assert len(set(map(id, parts))) == len(parts)
        assert len({p.name for p in parts}) == len(parts)
        for p in parts:
            assert p.scope in SCOPES, f"{p.name}: scope {p.scope!r}"
        assert fleet.parts is parts  # built once: handlers and the lifespan see the same objects
    finally:
        fleet.close()


def test_without_mdns_nothing_is_advertised(fleet: Fleet) -> None:
    assert "mdns" not in [p.name for p in fleet.parts]


def _recorded(calls: list[tuple[str, str]], what: str, name: str,
              real: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        calls.append((what, name))
        await real()
    return run


def test_the_lifespan_starts_the_parts_in_order_and_stops_them_in_reverse(advertising: Settings) -> None:
    fleet = Fleet(advertising)
    calls: list[tuple[str, str]] = []
    try:
        names = [p.name for p in fleet.parts]
        for p in fleet.parts:
            obj: Any = p
            obj.start = _recorded(calls, "start", p.name, p.start)
            obj.stop = _recorded(calls, "stop", p.name, p.stop)
        with TestClient(app=create_app(fleet)) as client:
            assert calls == [("start", n) for n in names]
            assert client.get("/healthz").status_code == 200
            assert fleet.hub._task is not None and not fleet.hub._task.done()  # really started
        assert calls[len(names):] == [("stop", n) for n in reversed(names)]
    finally:
        fleet.close()
    # The orders the server relies on.
    assert names.index("hub") < names.index("presence")  # presence reads what the hub knows
    assert names.index("webhooks") < names.index("alerts")  # the engine's incidents wake the deliverer
    assert names[0] == "telemetry intake"  # stopped last: it commits the points the others fed it
    assert names[-1] == "mdns"  # advertised once everything runs; withdrawn first


def test_a_part_that_fails_to_start_stops_the_ones_before_it(fleet: Fleet) -> None:
    import asyncio

    from fleetd.core.lifecycle import running

    calls: list[str] = []

    class Fake:
        scope = "process"

        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        async def start(self) -> None:
            calls.append(f"start {self.name}")
            if self.fail:
                raise RuntimeError("no")

        async def stop(self) -> None:
            calls.append(f"stop {self.name}")
            if self.name == "b":
                raise OSError("stop failed")

    async def main() -> None:
        async with running([Fake("a"), Fake("b"), Fake("c", fail=True), Fake("d")]):
            raise AssertionError("never reached")

    with pytest.raises(RuntimeError):
        asyncio.run(main())
    assert calls == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def _fleet_registries(path: Path) -> list[str]:
    """Module-level names holding Fleet objects: a weak dictionary or set, or anything annotated with Fleet."""
    bad = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            value = ast.unparse(node.value)
            note = ast.unparse(node.annotation) if isinstance(node, ast.AnnAssign) else ""
            if any(w in value for w in ("WeakKeyDictionary", "WeakValueDictionary", "WeakSet")) or "Fleet" in note:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return bad


def test_no_module_keeps_a_registry_of_fleets() -> None:
    bad = [b for p in sorted(SRC.rglob("*.py")) for b in _fleet_registries(p)]
    assert not bad, "keep per-fleet objects on the Fleet, not in a module-level registry:\n" + "\n".join(bad)
