-- Staged rollouts (issue 5). Per-device progress is not stored: it is derived from the rollout's
-- actions (actions.rollout_id) and the devices' component reports. Only what cannot be derived
-- later is kept: when each stage started and ended, and post-install faults seen during a soak
-- (their evidence, such as telemetry, ages out).

CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    artifact_id     TEXT NOT NULL REFERENCES artifacts(id),
    component       TEXT NOT NULL,
    -- {"tags": {k: v}, "device_types": [..], "device_ids": [..], "select": bool}
    target          TEXT NOT NULL,
    -- cumulative percentages, JSON array such as [5, 25, 100]
    stages          TEXT NOT NULL,
    -- fraction 0..1 of the attempted devices that may fail
    max_failure     REAL NOT NULL,
    soak_seconds    REAL NOT NULL,
    offline_timeout REAL NOT NULL,
    start_at        REAL,
    window          TEXT NOT NULL DEFAULT '',
    health          TEXT NOT NULL DEFAULT '',
    consent         INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL CHECK (state IN
                        ('scheduled', 'running', 'paused', 'completed', 'rolled_back', 'cancelled')),
    -- index of the last started stage; -1 before the first one starts
    stage           INTEGER NOT NULL DEFAULT -1,
    reason          TEXT NOT NULL DEFAULT '',
    -- bumped by every change, so the orchestrator never applies a decision made on a stale read
    rev             INTEGER NOT NULL DEFAULT 0,
    created_by      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL
);
CREATE INDEX rollouts_state ON rollouts(state, component);

CREATE TABLE rollout_stages (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    -- how it ended: completed, promoted, rolled_back, cancelled
    outcome     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, idx)
);

CREATE TABLE rollout_faults (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);

-- Covering indexes for the orchestrator's bulk reads: a rollout's actions, and one component on every device.
CREATE INDEX actions_rollout ON actions(rollout_id, device_id, kind, state, updated_at, finished_at)
    WHERE rollout_id IS NOT NULL;
CREATE INDEX device_components_name ON device_components(name, device_id, version, state, health, restarts);
