-- An operator can disable an account (`authsvc users disable`): it cannot log in and its
-- sessions stop working. NULL: the account is enabled.

ALTER TABLE users ADD COLUMN disabled_at timestamptz;
