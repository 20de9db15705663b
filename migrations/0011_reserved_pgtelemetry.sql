-- PLACEHOLDER on branch sharedstate only: migration 0011 belongs to the pgtelemetry helper. Delete this file when
-- merging that branch's 0011 (it exists so that this branch's 0013 applies: the runner wants 1..N without gaps).
SELECT 1;
