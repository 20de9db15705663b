-- The user an API key acts for (issue 13): its creator, or the owner of the key that created it; NULL for
-- keys made offline (fleetd keys create --data-dir) or by the system. Disabling the owner suspends the key,
-- deleting them revokes it, and the owner's role caps the key's (auth.lookup_api_key).
ALTER TABLE api_keys ADD COLUMN owner_user_id text;
CREATE INDEX api_keys_owner ON api_keys(owner_user_id) WHERE owner_user_id IS NOT NULL;

-- Backfill from the audit log: follow key.create entries back through keys that created keys to a user.
UPDATE api_keys SET owner_user_id = (
    WITH RECURSIVE chain(kind, actor, depth) AS (
        SELECT a.actor_kind, a.actor_id, 0 FROM audit_log a
         WHERE a.action = 'key.create' AND a.target = api_keys.id
        UNION
        SELECT a.actor_kind, a.actor_id, chain.depth + 1 FROM audit_log a JOIN chain
            ON a.action = 'key.create' AND a.target = chain.actor
         WHERE chain.kind = 'key' AND chain.depth < 32
    )
    SELECT actor FROM chain WHERE kind = 'user' ORDER BY depth LIMIT 1
);

-- Keys of users deleted before this migration: revoked now, as deleting a user does from now on.
UPDATE api_keys SET revoked_at = EXTRACT(EPOCH FROM statement_timestamp())::double precision
 WHERE owner_user_id IS NOT NULL AND revoked_at IS NULL
   AND owner_user_id NOT IN (SELECT id FROM users);
