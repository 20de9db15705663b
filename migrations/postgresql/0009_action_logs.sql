-- Action kind 'logs': a device sends the last lines of an app's log (issue 15), and the table that keeps what
-- actions bring back. Where SQLite rebuilds the actions table to change its CHECK, PostgreSQL replaces the
-- constraint in place; the table's columns, indexes and triggers stay as they are.
ALTER TABLE actions DROP CONSTRAINT actions_kind_check;
ALTER TABLE actions ADD CONSTRAINT actions_kind_check
    CHECK (kind IN ('install', 'rollback', 'restart', 'reboot', 'config', 'logs'));

-- What an action brought back (msgspec JSON of devices.actions.ActionResult: a logs action's lines, at most
-- 256 KiB of text). Each device keeps its newest 20; the actions themselves stay.
CREATE TABLE action_results (
    action_id  text PRIMARY KEY REFERENCES actions(id) ON DELETE CASCADE,
    device_id  text NOT NULL,
    result     text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX action_results_device ON action_results(device_id, created_at);
