"""`fleetd serve --database postgresql://...`: the whole server on a real PostgreSQL (docs/operations.md, "PostgreSQL").

One server for the module, on a database of its own: a simulated device enrolls with a join token, checks in, gets
an artifact pushed with the CLI and deployed, installs it and reports it; its telemetry is stored and read back;
the UI and /metrics answer; the offline admin commands work on the database, and backup / restore refuse with what
to do instead; the server restarts on the same database with the fleet intact. The DSN carries a password
(loopback connections to the test server are trusted, so it is not checked): it must never be printed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .server import ServerProcess, free_port, run_cli
from .test_simulate import call, device_by_hw, join_token, push_artifact, start_sim, stop_sim, wait_for

if TYPE_CHECKING:
    from tests.support.services import PostgresServer

pytestmark = pytest.mark.e2e

PASSWORD = "pw-never-shown-4711"
TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")


def with_password(dsn: str) -> str:
    return dsn.replace("postgresql://fleetd@", f"postgresql://fleetd:{PASSWORD}@", 1)


@pytest.fixture(scope="module")
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield with_password(postgres_server.dsn(name))
    postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def pg(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("pg") / "data", database=dsn).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(pg: ServerProcess) -> str:
    # `fleetd keys create --data-dir` (offline) with FLEETD_DATABASE: the key is in PostgreSQL, and the server
    # takes it on its next request.
    return pg.create_key("admin", "pg-admin")


@pytest.fixture(scope="module")
def device(pg: ServerProcess, key: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One simulated device that enrolled, installed pgapp@1.0.0 and reported it, and sent telemetry."""
    push_artifact(pg, key, tmp_path_factory.mktemp("pg-files"), "pgapp", "1.0.0", b"pgapp 1.0.0\n" * 4000)
    sim = start_sim(pg, "--token", join_token(pg, key), "--ca", pg.ca, "--devices", "1", "--prefix", "pgdev",
                    "--interval", "0.5", "--duration", "40")
    try:
        dev = wait_for(lambda: device_by_hw(pg, key, "pgdev-1"), 15, "pgdev-1 to check in")
        ids = call(pg, key, "DeviceAdminService", "Deploy", {"device_ids": [dev["id"]], "artifact": "pgapp@1.0.0"})
        action_id = ids["action_ids"][0]

        def ended() -> dict[str, Any] | None:
            acts = call(pg, key, "DeviceAdminService", "ListActions", {"device_id": dev["id"]})["actions"]
            return next((a for a in acts if a["id"] == action_id and a["state"] in TERMINAL), None)

        action = wait_for(ended, 20, "the deployment to end")
        wait_for(lambda: call(pg, key, "TelemetryService", "ListMetrics", {"device": dev["id"]})["metrics"], 15,
                 "pgdev-1's telemetry")
    finally:
        summary = stop_sim(sim)
    return {"device": dev, "action": action, "summary": summary}


def test_the_server_says_where_its_database_is_without_the_password(pg: ServerProcess, dsn: str) -> None:
    assert f"database {dsn.replace(PASSWORD, '***')}" in pg.log()
    assert PASSWORD not in pg.log()


def test_a_device_enrolls_installs_and_reports(pg: ServerProcess, key: str, device: dict[str, Any]) -> None:
    action, summary = device["action"], device["summary"]
    assert action["state"] == "succeeded" and action["message"] == "installed pgapp@1.0.0", action
    assert summary["enrolled"] == summary["active"] == 1 and summary["errors"] == 0, summary
    assert summary["actions_succeeded"] == 1 and summary["check_ins"] >= 2, summary
    got = call(pg, key, "DeviceAdminService", "GetDevice", {"id": device["device"]["id"]})
    assert got["status"] == "active" and got["device_type"] == "sim"
    assert [(c["name"], c["version"]) for c in got["components"]] == [("pgapp", "1.0.0")]
    acts = call(pg, key, "DeviceAdminService", "ListActions", {"device_id": got["id"]})["actions"]
    assert [a["state"] for a in acts] == ["succeeded"]


def test_telemetry_is_stored_and_read_back(pg: ServerProcess, key: str, device: dict[str, Any]) -> None:
    did = device["device"]["id"]
    metrics = call(pg, key, "TelemetryService", "ListMetrics", {"device": did})["metrics"]
    assert metrics
    now = dt.datetime.now(dt.UTC)
    body = {"device": did, "metric": metrics[0], "start": (now - dt.timedelta(minutes=10)).isoformat(),
            "end": (now + dt.timedelta(minutes=1)).isoformat(), "max_points": 3600}
    out = call(pg, key, "TelemetryService", "Query", body)
    assert out["resolution"] == "raw" and out["device_count"] == 1
    points = out["points"]  # raw, in buckets of a fraction of a second: points sent together may share one
    assert len(points) >= 2 and all(p["min"] <= p["avg"] <= p["max"] for p in points), out
    assert all(now.timestamp() - 120 < p["ts"] <= time.time() for p in points), out


def test_the_ui_and_metrics_answer(pg: ServerProcess, key: str) -> None:
    with pg.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for asset in re.findall(r'(?:src|href)="/?([\w./-]+\.(?:js|css))"', page.text):
            assert c.get(f"/{asset}").status_code == 200, asset
    with pg.client(key) as c:
        text = c.get("/metrics").raise_for_status().text
    size = float(re.search(r"^fleetd_db_size_bytes (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert size > 1 << 20  # pg_database_size: several MiB once migrated


def test_offline_admin_commands_work_on_the_database(pg: ServerProcess, key: str, dsn: str) -> None:
    env = {"FLEETD_DATABASE": dsn}
    run_cli("users", "create", "olga", "--role", "operator", "--password", "a long enough password",
            "--data-dir", str(pg.data_dir), env=env)
    users = call(pg, key, "UserService", "ListUsers")["users"]
    assert "olga" in [u["username"] for u in users]
    listed = json.loads(run_cli("users", "list", "--data-dir", str(pg.data_dir), "--json", env=env).stdout)
    assert "olga" in [u["username"] for u in listed]
    run_cli("users", "passwd", "olga", "--password", "another long password", "--data-dir", str(pg.data_dir),
            env=env)
    audit = json.loads(run_cli("audit", "--data-dir", str(pg.data_dir), "--type", "user.", "--json", env=env).stdout)
    olga = next(u["id"] for u in listed if u["username"] == "olga")
    assert [(e["action"], e["target"]) for e in audit][:2] == [("user.password", olga), ("user.create", olga)]


@pytest.mark.parametrize("args", [["backup", "{out}"], ["restore", "{archive}", "--data-dir", "{new}"]])
def test_backup_and_restore_refuse_and_say_what_to_do(pg: ServerProcess, dsn: str, tmp_path: Path,
                                                      args: list[str]) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    filled = [a.format(out=tmp_path / "b.tar", archive=archive, new=tmp_path / "new") for a in args]
    p = run_cli(*filled, *(["--data-dir", str(pg.data_dir)] if args[0] == "backup" else []),
                env={"FLEETD_DATABASE": dsn}, check=False)
    said = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 1, said
    assert "PostgreSQL" in said and "pg_dump" in said and "docs/operations.md" in said, said
    assert PASSWORD not in said and "fleetd:***@" in said
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "new").exists()


def test_a_restart_on_the_same_database_keeps_the_fleet(pg: ServerProcess, key: str,
                                                       device: dict[str, Any]) -> None:
    did = device["device"]["id"]
    before = call(pg, key, "DeviceAdminService", "GetDevice", {"id": did})
    artifacts = call(pg, key, "ArtifactService", "ListArtifacts")["artifacts"]
    assert pg.stop() in (0, -signal.SIGTERM)  # uvicorn ends a SIGTERM'd server with that signal
    assert "Traceback" not in pg.log()
    pg.start()
    after = call(pg, key, "DeviceAdminService", "GetDevice", {"id": did})  # the key is in the database
    assert (after["hardware_id"], after["status"], after["components"]) == (
        before["hardware_id"], before["status"], before["components"])
    assert call(pg, key, "ArtifactService", "ListArtifacts")["artifacts"] == artifacts
    acts = call(pg, key, "DeviceAdminService", "ListActions", {"device_id": did})["actions"]
    assert [(a["id"], a["state"]) for a in acts] == [(device["action"]["id"], "succeeded")]
    assert call(pg, key, "TelemetryService", "ListMetrics", {"device": did})["metrics"]


def test_an_unreachable_database_stops_the_start_within_seconds(tmp_path: Path) -> None:
    dsn = f"postgresql://fleetd:{PASSWORD}@127.0.0.1:{free_port()}/fleetd"
    s = ServerProcess(tmp_path / "data", database=dsn)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="fleetd exited with 1"):
        s.start()
    s.stop()
    assert time.monotonic() - started < 10
    said = " ".join(s.log().split())
    assert "cannot connect to the PostgreSQL database (host=127.0.0.1" in said, said
    assert "Check that the server runs" in said and PASSWORD not in said, said
