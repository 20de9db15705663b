-- Staged rollouts (issue 5). Per-device progress is not stored: it is derived from the rollout's
-- actions (actions.rollout_id) and the devices' component reports. Only what cannot be derived
-- later is kept: when each stage started and ended, and post-install faults seen during a soak
-- (their evidence, such as telemetry, ages out).

CREATE TABLE rollouts (
    id              text PRIMARY KEY,
    artifact_id     text NOT NULL REFERENCES artifacts(id),
    component       text NOT NULL,
    -- {"tags": {k: v}, "device_types": [..], "device_ids": [..], "select": bool}
    target          text NOT NULL,
    -- cumulative percentages, JSON array such as [5, 25, 100]
    stages          text NOT NULL,
    -- fraction 0..1 of the attempted devices that may fail
    max_failure     double precision NOT NULL,
    soak_seconds    double precision NOT NULL,
    offline_timeout double precision NOT NULL,
    start_at        double precision,
    -- WINDOW is a reserved word in PostgreSQL: queries must quote this column ("window"), as SQLite also accepts.
    "window"        text NOT NULL DEFAULT '',
    health          text NOT NULL DEFAULT '',
    consent         bigint NOT NULL DEFAULT 0,
    state           text NOT NULL CHECK (state IN
                        ('scheduled', 'running', 'paused', 'completed', 'rolled_back', 'cancelled')),
    -- index of the last started stage; -1 before the first one starts
    stage           bigint NOT NULL DEFAULT -1,
    reason          text NOT NULL DEFAULT '',
    -- bumped by every change, so the orchestrator never applies a decision made on a stale read
    rev             bigint NOT NULL DEFAULT 0,
    created_by      text,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL,
    started_at      double precision,
    finished_at     double precision
);
CREATE INDEX rollouts_state ON rollouts(state, component);

CREATE TABLE rollout_stages (
    rollout_id  text NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    idx         bigint NOT NULL,
    started_at  double precision NOT NULL,
    ended_at    double precision,
    -- how it ended: completed, promoted, rolled_back, cancelled
    outcome     text NOT NULL DEFAULT '',
    PRIMARY KEY (rollout_id, idx)
);

CREATE TABLE rollout_faults (
    rollout_id  text NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id   text NOT NULL,
    reason      text NOT NULL,
    at          double precision NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);

-- Covering indexes for the orchestrator's bulk reads: a rollout's actions, and one component on every device.
CREATE INDEX actions_rollout ON actions(rollout_id, device_id, kind, state, updated_at, finished_at)
    WHERE rollout_id IS NOT NULL;
CREATE INDEX device_components_name ON device_components(name, device_id, version, state, health, restarts);
