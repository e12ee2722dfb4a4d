-- Pruning reads only what it deletes: each prune takes its oldest rows first, by an index on
-- the age it prunes by, a batch per statement (authsvc/db/repo/__init__.py, delete_in_batches).
--
-- A session ended at the earlier of its expiry and its revocation (least() passes over a
-- NULL revoked_at): the one age the sessions prune looks at. `expires_at < x OR revoked_at < x`
-- had no index for its second half and read the whole table for every batch; the index on
-- expires_at served only that prune, and goes. Building this one holds back writes to
-- sessions for as long as it takes (seconds for a million rows), once.

CREATE INDEX sessions_ended_at_idx ON sessions ((least(expires_at, revoked_at)));
DROP INDEX sessions_expires_at_idx;
