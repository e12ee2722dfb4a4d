-- The account-wide and address-wide login budgets, the addresses an account has logged in
-- from, and the record of every login attempt.

-- Token buckets: `tokens` as of `updated_at`, refilled at a rate the code passes in.
-- scope 'account': key is the login identifier; scope 'address': key is the client address.
CREATE TABLE login_budgets (
    scope         text             NOT NULL CHECK (scope IN ('account', 'address')),
    key           text             NOT NULL,
    tokens        double precision NOT NULL,
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    blocked_until timestamptz      NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (scope, key)
);

CREATE INDEX login_budgets_updated_at_idx ON login_budgets (updated_at);

-- Where an account last logged in successfully: the owner's own addresses are not held
-- back by the account-wide budget that an attacker elsewhere may have used up.
CREATE TABLE login_known_addresses (
    identifier      text        NOT NULL,
    address         text        NOT NULL,
    last_success_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (identifier, address)
);

CREATE INDEX login_known_addresses_last_success_at_idx ON login_known_addresses (last_success_at);

-- Every login attempt: never a password, only what was typed as the identifier. Refusals
-- repeated within a second by the same identifier and address share a row (`attempts`),
-- so a flood cannot fill the disk at the rate it sends.
CREATE TABLE auth_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    identifier text        NOT NULL,
    address    text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('success', 'failure', 'throttled', 'busy', 'error')),
    reason     text,
    attempts   integer     NOT NULL DEFAULT 1 CHECK (attempts > 0)
);

CREATE INDEX auth_events_at_idx ON auth_events (at);
CREATE INDEX auth_events_identifier_at_idx ON auth_events (identifier, at);
