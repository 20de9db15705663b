-- Telemetry rollups and their bookkeeping; alert rules, incidents, webhooks and their delivery log.

-- The raw table gets an explicit INTEGER PRIMARY KEY (an alias of the rowid, so inserts cost the
-- same): rollups and range pruning work from id ranges, and VACUUM keeps these ids stable.
CREATE TABLE telemetry_new (
    id        INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    ts        REAL NOT NULL,
    value     REAL NOT NULL,
    tags      TEXT
);
INSERT INTO telemetry_new (id, device_id, name, ts, value, tags)
    SELECT rowid, device_id, name, ts, value, tags FROM telemetry ORDER BY rowid;
DROP TABLE telemetry;
ALTER TABLE telemetry_new RENAME TO telemetry;

-- One series per (device, metric): rollup rows carry its small integer id instead of two strings.
CREATE TABLE telemetry_series (
    id        INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    UNIQUE (device_id, name)
);
CREATE INDEX telemetry_series_name ON telemetry_series(name);

-- Per-minute and per-hour rollups; ts is the bucket's start (Unix seconds). sum and count (not avg)
-- so that rollups merge exactly: an hour is the merge of its minutes. No index on ts alone: every
-- read (and retention) goes by series, then time.
CREATE TABLE telemetry_minute (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       REAL NOT NULL,
    min       REAL NOT NULL,
    max       REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

CREATE TABLE telemetry_hour (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    sum       REAL NOT NULL,
    min       REAL NOT NULL,
    max       REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

-- Every raw id up to rolled_up_to is in the rollups.
CREATE TABLE telemetry_rollup_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    rolled_up_to INTEGER NOT NULL
);
INSERT INTO telemetry_rollup_state (id, rolled_up_to) VALUES (1, 0);

-- A block-range index over the raw table, one row per rollup pass: raw ids (lo, hi] hold only
-- points with min_ts <= ts < max_ts. Raw queries and retention scan only the blocks they need.
CREATE TABLE telemetry_blocks (
    hi     INTEGER PRIMARY KEY,
    lo     INTEGER NOT NULL,
    min_ts REAL NOT NULL,
    max_ts REAL NOT NULL
);

CREATE TABLE alert_rules (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('threshold', 'no_data')),
    metric      TEXT NOT NULL,
    aggregate   TEXT NOT NULL CHECK (aggregate IN ('avg', 'min', 'max')),
    comparison  TEXT NOT NULL CHECK (comparison IN ('>', '<', '>=', '<=')),
    threshold   REAL NOT NULL,
    window_seconds INTEGER NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    device_type TEXT NOT NULL DEFAULT '',
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_by  TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE alert_incidents (
    id          TEXT PRIMARY KEY,
    rule_id     TEXT NOT NULL,
    -- The rule's name and metric when it fired: the incident stays readable after the rule is gone.
    rule_name   TEXT NOT NULL,
    metric      TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    value       REAL,
    last_value  REAL,
    message     TEXT NOT NULL DEFAULT '',
    started_at  REAL NOT NULL,
    resolved_at REAL,
    resolution  TEXT NOT NULL DEFAULT ''
);
-- At most one open incident per device and rule: the deduplication is the database's.
CREATE UNIQUE INDEX alert_incidents_open ON alert_incidents(rule_id, device_id) WHERE state = 'firing';
CREATE INDEX alert_incidents_started ON alert_incidents(started_at);

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    events     TEXT NOT NULL,
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_by TEXT,
    created_at REAL NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    incident_id     TEXT,
    body            BLOB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    finished_at     REAL
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(webhook_id, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries(webhook_id, id);
