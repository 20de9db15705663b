-- State that replicas on one database share (issue 18; docs/security.md, docs/decisions.md). A single server on
-- SQLite keeps these in memory and in its data dir, and leaves these tables empty: they exist on both databases so
-- that the schemas stay the same.

-- Rate limits that matter for security (login, enrollment, device authentication), counted per client address
-- in fixed slots of the limit's window (slot = floor(time / window)); a hit upserts its slot's row. The limit
-- weighs the previous slot's hits by how much of it the sliding window still covers. Rows older than the
-- previous slot are deleted as the slots roll over.
CREATE TABLE rate_limits (
    scope text NOT NULL,     -- what is limited: login, enrollment, authentication
    key   text NOT NULL,     -- the client address
    slot  bigint NOT NULL,  -- floor(seconds since the epoch / the window's seconds)
    hits  bigint NOT NULL,
    PRIMARY KEY (scope, key, slot)
);

-- Artifact uploads opened by CreateUpload and not yet sent (PUT /v1/uploads/{id}), so that the PUT may reach
-- another replica than the CreateUpload. Single use: the PUT deletes the row it claims.
CREATE TABLE upload_sessions (
    id         text PRIMARY KEY,
    owner_kind text NOT NULL,  -- the principal that opened it: user or key
    owner_id   text NOT NULL,
    artifact   text NOT NULL,  -- what CreateUpload fixed (artifacts.uploads.PendingArtifact), JSON
    expires_at double precision NOT NULL
);
CREATE INDEX upload_sessions_owner ON upload_sessions(owner_kind, owner_id);

-- The fleet's key material (the CA's certificate and key, the artifact-signing key, the token key), sealed with
-- AES-256-GCM under the key encryption key from the environment or a file (never stored here). The first replica
-- to start makes them (or imports its data dir's), every other reads them.
CREATE TABLE fleet_keys (
    name       text PRIMARY KEY,  -- ca, signing, token
    kek_id     text NOT NULL,     -- which key encryption key sealed it (a hash of it, not the key)
    sealed     bytea NOT NULL,     -- 12-byte nonce, then the ciphertext and its tag
    created_at double precision NOT NULL
);

-- Device authentication challenges used (devices/challenges.py): a nonce carries its device, expiry and MAC, so any
-- replica checks it without a record; its use is recorded here, so that it is single use across replicas. Rows of
-- expired nonces are deleted by the next use.
CREATE TABLE used_challenges (
    nonce      text PRIMARY KEY,
    expires_at double precision NOT NULL
);
CREATE INDEX used_challenges_expiry ON used_challenges(expires_at);
