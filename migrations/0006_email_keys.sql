-- One person, one account: emails are compared in one normal form, and an address that looks
-- like an existing account's is refused as a duplicate is (authsvc/emails.py).
--
-- email_key: NFKC, lower-cased, the domain's IDNA A-label; what a login looks up.
-- email_skeleton: the UTS #39 skeleton of the address; look-alikes share it.
-- Both are computed in Python (PostgreSQL has neither IDNA nor Unicode's confusables), so
-- they are NULL here: for the rows that exist, authsvc/email_backfill.py fills them in right
-- after this file, under the same advisory lock, and again at every later migrate for rows an
-- older replica wrote meanwhile. Until then a row is found by lower(email), as before.
--
-- email_collides_with: the backfill found an older account (by id) with the same key (this
-- row is then disabled and keeps no key) or the same skeleton (it keeps its key, so it can
-- still log in, but no skeleton). An operator decides what becomes of it.

ALTER TABLE users
    ADD COLUMN email_key           text,
    ADD COLUMN email_skeleton      text,
    ADD COLUMN email_collides_with bigint;

CREATE UNIQUE INDEX users_email_key_key ON users (email_key);
CREATE UNIQUE INDEX users_email_skeleton_key ON users (email_skeleton);
-- What the backfill has left to do, found without reading the whole table.
CREATE INDEX users_email_unkeyed_idx ON users (id) WHERE email_key IS NULL AND email_collides_with IS NULL;

-- users_email_lower_key stays while replicas of the previous version may still be running:
-- their signups name it in ON CONFLICT.
