-- PLACEHOLDER on branch sharedstate only: migration 0012 belongs to the replicas helper. Delete this file when
-- merging that branch's 0012 (it exists so that this branch's 0013 applies: the runner wants 1..N without gaps).
SELECT 1;
