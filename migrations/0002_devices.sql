-- Devices, join tokens, artifacts, actions and raw telemetry.

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '{}',
    max_uses    INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    expires_at  REAL,
    created_by  TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    hardware_id   TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    device_type   TEXT NOT NULL,
    public_key    BLOB NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
    claim_code    TEXT UNIQUE,
    token_id      TEXT,
    tags          TEXT NOT NULL DEFAULT '{}',
    inventory     TEXT NOT NULL DEFAULT '{}',
    poll_interval INTEGER NOT NULL DEFAULT 60,
    -- Bumped on revoke and re-enroll: bearer tokens carry it, so old ones stop working.
    auth_epoch    INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    enrolled_at   REAL,
    last_seen     REAL,
    last_addr     TEXT
);
CREATE INDEX devices_status ON devices(status);

-- What runs on a device, per component, as it last reported; previous_version is the
-- last known-good version before the current one (what a rollback installs).
CREATE TABLE device_components (
    device_id        TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    previous_version TEXT,
    state            TEXT NOT NULL DEFAULT '',
    health           TEXT NOT NULL DEFAULT '',
    restarts         INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL NOT NULL,
    PRIMARY KEY (device_id, name)
);

CREATE TABLE artifacts (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('app', 'agent', 'firmware')),
    device_types TEXT NOT NULL,
    sha256       TEXT NOT NULL REFERENCES blobs(sha256),
    size         INTEGER NOT NULL,
    file_name    TEXT NOT NULL,
    install_spec TEXT,
    manifest     BLOB NOT NULL,
    signature    TEXT NOT NULL,
    offline_signatures TEXT NOT NULL DEFAULT '[]',
    created_by   TEXT,
    created_at   REAL NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX artifacts_sha256 ON artifacts(sha256);

CREATE TABLE actions (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('install', 'rollback', 'restart', 'reboot', 'config')),
    component   TEXT NOT NULL DEFAULT '',
    artifact_id TEXT REFERENCES artifacts(id),
    state       TEXT NOT NULL,
    open        INTEGER NOT NULL DEFAULT 1,
    message     TEXT NOT NULL DEFAULT '',
    progress    INTEGER NOT NULL DEFAULT 0,
    params      TEXT NOT NULL DEFAULT '{}',
    rollout_id  TEXT,
    created_by  TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX actions_device ON actions(device_id, created_at);
CREATE INDEX actions_open ON actions(device_id) WHERE open = 1;
CREATE INDEX actions_artifact ON actions(artifact_id);

CREATE TABLE action_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id TEXT NOT NULL REFERENCES actions(id) ON DELETE CASCADE,
    ts        REAL NOT NULL,
    state     TEXT NOT NULL,
    message   TEXT NOT NULL DEFAULT '',
    progress  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX action_events_action ON action_events(action_id, id);

-- Raw points as devices send them; no secondary index so that ingest stays fast
-- (rollups and their indexes come with the telemetry queries).
CREATE TABLE telemetry (
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    ts        REAL NOT NULL,
    value     REAL NOT NULL,
    tags      TEXT
);
