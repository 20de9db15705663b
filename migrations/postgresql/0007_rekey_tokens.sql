-- A re-key token: a single-use join token an admin creates for one existing device that lost its key
-- (fleetd devices rekey). It replaces that device's key only; NULL for ordinary join tokens.
ALTER TABLE join_tokens ADD COLUMN device_id text REFERENCES devices(id) ON DELETE CASCADE;
