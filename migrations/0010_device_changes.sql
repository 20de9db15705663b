-- The orchestrator's change log (issue 16): which devices had something change that a rollout's progress is
-- derived from, in commit order. A pass reads the entries past the sequence number it has seen and re-reads
-- only those devices, so a pass over a rollout in which nothing changed reads no device rows at all.
--
-- Filled by triggers, in the transaction of the change itself, so the log cannot miss one whoever writes: an
-- action made or moved (its state, progress, message or times), a component reported, changed or dropped, a
-- device enrolled, re-enrolled, retagged, retyped, revoked or deleted, and a fault recorded against a device.
-- A check-in that only refreshes last_seen is not logged (the orchestrator re-reads last_seen where it matters:
-- at a device's next deadline, and for the devices that wait for a check-in). The orchestrator deletes the
-- entries no tracker needs (every minute, whether rollouts run or not: Orchestrator.forget); AUTOINCREMENT keeps
-- sequence numbers from being reused after that.
CREATE TABLE device_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL
);

CREATE TRIGGER device_changes_action_new AFTER INSERT ON actions BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.device_id);
END;
CREATE TRIGGER device_changes_action_moved AFTER UPDATE ON actions BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.device_id);
END;
CREATE TRIGGER device_changes_component_new AFTER INSERT ON device_components BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.device_id);
END;
CREATE TRIGGER device_changes_component_moved AFTER UPDATE ON device_components BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.device_id);
END;
CREATE TRIGGER device_changes_component_gone AFTER DELETE ON device_components BEGIN
    INSERT INTO device_changes (device_id) VALUES (OLD.device_id);
END;
CREATE TRIGGER device_changes_device_new AFTER INSERT ON devices BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.id);
END;
CREATE TRIGGER device_changes_device_moved AFTER UPDATE OF status, tags, device_type, enrolled_at, created_at
    ON devices BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.id);
END;
CREATE TRIGGER device_changes_device_gone AFTER DELETE ON devices BEGIN
    INSERT INTO device_changes (device_id) VALUES (OLD.id);
END;
CREATE TRIGGER device_changes_fault AFTER INSERT ON rollout_faults BEGIN
    INSERT INTO device_changes (device_id) VALUES (NEW.device_id);
END;
