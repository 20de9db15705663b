-- hawkBit DDI (issue 9): DDI devices, their tokens, integer ids for actions and artifacts.

-- A fleetd device that speaks DDI; its controller id is its hardware id.
CREATE TABLE ddi_devices (
    device_id        TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    controller_id    TEXT NOT NULL UNIQUE,
    -- 1 until the device has sent config data: the poll answer then carries a configData link.
    config_requested INTEGER NOT NULL DEFAULT 1,
    created_at       REAL NOT NULL
);

-- TargetToken (one device) and GatewayToken (the whole tenant); only a SHA-256 of the secret is kept.
CREATE TABLE ddi_tokens (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('target', 'gateway')),
    secret_hash BLOB NOT NULL UNIQUE,
    device_id   TEXT REFERENCES devices(id) ON DELETE CASCADE,
    -- Gateway tokens: what a device they register gets.
    device_type TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '{}',
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE INDEX ddi_tokens_device ON ddi_tokens(device_id) WHERE device_id IS NOT NULL;

-- DDI clients parse action and software module ids as integers. AUTOINCREMENT: a number is never
-- handed out twice, even after its action or artifact is deleted (rowids could be, and VACUUM renumbers them).
CREATE TABLE ddi_ids (
    num  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('action', 'artifact')),
    ref  TEXT NOT NULL,
    UNIQUE (kind, ref)
);
INSERT INTO ddi_ids (kind, ref) SELECT 'artifact', id FROM artifacts ORDER BY created_at, rowid;
INSERT INTO ddi_ids (kind, ref) SELECT 'action', id FROM actions ORDER BY created_at, rowid;

CREATE TRIGGER ddi_ids_new_action AFTER INSERT ON actions BEGIN
    INSERT INTO ddi_ids (kind, ref) VALUES ('action', NEW.id);
END;
CREATE TRIGGER ddi_ids_new_artifact AFTER INSERT ON artifacts BEGIN
    INSERT INTO ddi_ids (kind, ref) VALUES ('artifact', NEW.id);
END;
CREATE TRIGGER ddi_ids_gone_action AFTER DELETE ON actions BEGIN
    DELETE FROM ddi_ids WHERE kind = 'action' AND ref = OLD.id;
END;
CREATE TRIGGER ddi_ids_gone_artifact AFTER DELETE ON artifacts BEGIN
    DELETE FROM ddi_ids WHERE kind = 'artifact' AND ref = OLD.id;
END;

-- What a DDI device did with an action beyond its fleetd state: when it fetched the deployment (a cancelled
-- action it fetched is shown as cancelAction) and when it answered the cancellation.
CREATE TABLE ddi_action_state (
    action_id       TEXT PRIMARY KEY REFERENCES actions(id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    fetched_at      REAL,
    cancel_acked_at REAL
);
CREATE INDEX ddi_action_state_device ON ddi_action_state(device_id);
