-- Action kind 'logs': a device sends the last lines of an app's log (issue 15), and the table that keeps what
-- actions bring back. SQLite cannot change a CHECK in place, so the actions table is rebuilt as SQLite's
-- "other schema changes" procedure says: the runner applies migrations with foreign keys off and checks them
-- before each commit. The indexes and triggers on actions go with the old table and are made again.
CREATE TABLE actions_new (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('install', 'rollback', 'restart', 'reboot', 'config', 'logs')),
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
INSERT INTO actions_new (id, device_id, kind, component, artifact_id, state, open, message, progress, params,
                         rollout_id, created_by, created_at, updated_at, finished_at)
    SELECT id, device_id, kind, component, artifact_id, state, open, message, progress, params,
           rollout_id, created_by, created_at, updated_at, finished_at FROM actions ORDER BY rowid;
DROP TABLE actions;
ALTER TABLE actions_new RENAME TO actions;

CREATE INDEX actions_device ON actions(device_id, created_at);
CREATE INDEX actions_open ON actions(device_id) WHERE open = 1;
CREATE INDEX actions_artifact ON actions(artifact_id);
CREATE INDEX actions_rollout ON actions(rollout_id, device_id, kind, state, updated_at, finished_at)
    WHERE rollout_id IS NOT NULL;
CREATE TRIGGER ddi_ids_new_action AFTER INSERT ON actions BEGIN
    INSERT INTO ddi_ids (kind, ref) VALUES ('action', NEW.id);
END;
CREATE TRIGGER ddi_ids_gone_action AFTER DELETE ON actions BEGIN
    DELETE FROM ddi_ids WHERE kind = 'action' AND ref = OLD.id;
END;

-- What an action brought back (msgspec JSON of devices.actions.ActionResult: a logs action's lines, at most
-- 256 KiB of text). Each device keeps its newest 20; the actions themselves stay.
CREATE TABLE action_results (
    action_id  TEXT PRIMARY KEY REFERENCES actions(id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX action_results_device ON action_results(device_id, created_at);
