"""Terminal recordings expire (remote_recording_days): each server process deletes its own data dir's old
recordings, and their audit entries say so (docs/remote-access.md, "Recordings")."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgspec
import pytest

from fleetd.accounts import audit
from fleetd.accounts.audit import Actor
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.maintenance import Maintenance, expire_recordings
from fleetd.remote import recording

pytestmark = pytest.mark.both_backends

DAY = 86400.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    remote_record_terminals=True, remote_recording_days=30)


def record(fleet: Fleet, session_id: str, age_days: float) -> recording.Recorder:
    """A recording as a session leaves it (written, its audit entries), last written ``age_days`` ago."""
    r = recording.Recorder(fleet.data_dir / "recordings", session_id, {"session": session_id, "device": "dev_1"})
    r.record(recording.OUTPUT, b"hello\r\n")
    r.close()
    when = time.time() - age_days * DAY
    os.utime(r.path, (when, when))
    actor = Actor("key", "key_1", "ops")
    fleet.store.write_sync(lambda c: (
        audit.record(c, actor, "device.remote_session_open", "dev_1", session=session_id, kind="terminal"),
        audit.record(c, actor, "device.remote_session", "dev_1", session=session_id, kind="terminal",
                     **r.summary())))
    return r


def details(fleet: Fleet, session_id: str) -> dict[str, dict[str, object]]:
    rows = fleet.store.read_sync(lambda c: c.execute("SELECT action, details FROM audit_log").fetchall())
    return {r[0]: d for r in rows if (d := json.loads(r[1])).get("session") == session_id}


def test_old_recordings_and_their_audit_references_expire(fleet: Fleet) -> None:
    old, recent = record(fleet, "rs_00000000000a", 40), record(fleet, "rs_00000000000b", 1)
    # A session still being written, whose file was last touched long ago: its recorder's lock keeps it.
    live = recording.Recorder(fleet.data_dir / "recordings", "rs_00000000000c", {"session": "rs_00000000000c"})
    os.utime(live.path, (time.time() - 40 * DAY,) * 2)
    (fleet.data_dir / "recordings" / "notes.txt").write_text("not a recording: left alone")

    # The maintenance of this process (not the fleet lease's: each replica has its own data dir) runs the job.
    own = next(p for p in fleet.parts if p.name == "recordings maintenance")
    assert own.scope == "process" and isinstance(own, Maintenance)
    own.jobs[0].next_at = 0
    asyncio.run(own.run_due())

    assert not old.path.exists() and recent.path.exists() and live.path.exists()
    assert (fleet.data_dir / "recordings" / "notes.txt").exists()
    gone = details(fleet, "rs_00000000000a")
    expired = gone["device.remote_session"]["recording_expired"]
    assert isinstance(expired, str) and expired.startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    assert gone["device.remote_session"]["recording"] == "rs_00000000000a.rec"  # the entry stays, says so
    assert "recording_expired" not in gone["device.remote_session_open"]
    assert "recording_expired" not in details(fleet, "rs_00000000000b")["device.remote_session"]

    # With an explicit clock, 31 days on: the recent one goes too; the live one once its session ended.
    assert asyncio.run(expire_recordings(fleet, now=time.time() + 31 * DAY)) == "1 deleted (1 audit entries marked)"
    assert not recent.path.exists() and live.path.exists()
    live.close()
    assert asyncio.run(expire_recordings(fleet, now=time.time() + 31 * DAY)) == "1 deleted (0 audit entries marked)"
    assert not live.path.exists()
    assert asyncio.run(expire_recordings(fleet)) == "0 deleted"


def test_retention_off_or_nothing_recorded_runs_nothing(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "settings", msgspec.structs.replace(fleet.settings, remote_recording_days=0))
    assert Maintenance.of_process(fleet) is None
    monkeypatch.setattr(fleet, "settings", msgspec.structs.replace(fleet.settings, remote_recording_days=30,
                                                                   remote_record_terminals=False))
    assert Maintenance.of_process(fleet) is None  # no recordings folder: none were ever made here
    (fleet.data_dir / "recordings").mkdir()
    assert Maintenance.of_process(fleet) is not None  # recording turned off since: the old ones still expire
    with pytest.raises(Exception, match="remote_recording_days must be 0"):
        Settings(remote_recording_days=-1)
