-- Service identities and scopes: users' roles, OAuth2 clients with their secrets and the
-- private_key_jwt assertions already used, API keys, and admin actions in auth_events.

-- A role grants scopes (AUTHSVC_ROLES); a user's access tokens carry its roles' scopes.
ALTER TABLE users ADD COLUMN roles text[] NOT NULL DEFAULT '{user}';

-- The scopes a login asked for (NULL: all its user's roles grant); a refresh keeps them.
ALTER TABLE sessions ADD COLUMN scopes text[];

CREATE TABLE clients (
    id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    name        text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    scopes      text[]      NOT NULL DEFAULT '{}',
    auth_method text        NOT NULL CHECK (auth_method IN ('client_secret', 'private_key_jwt')),
    jwks        jsonb,      -- private_key_jwt: the client's public keys, or
    jwks_uri    text,       -- where to fetch them
    token_ttl   integer     NOT NULL CHECK (token_ttl BETWEEN 60 AND 86400),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz,
    CHECK (auth_method = 'client_secret' OR jwks IS NOT NULL OR jwks_uri IS NOT NULL)
);

-- A secret is 256 random bits, so a SHA-256 of it is enough (as for refresh tokens). A
-- rotation adds a secret; the old one works until it is retired.
CREATE TABLE client_secrets (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id   text        NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    secret_hash bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

CREATE INDEX client_secrets_client_id_idx ON client_secrets (client_id);

-- Each private_key_jwt assertion's jti, until it expires: a replay is refused on every replica.
CREATE TABLE client_assertions (
    client_id  text        NOT NULL,
    jti        text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE INDEX client_assertions_expires_at_idx ON client_assertions (expires_at);

-- A person's API keys: shown once, stored as a SHA-256 (256 random bits, like secrets).
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix       text        NOT NULL,
    key_hash     bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz
);

CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, created_at);

-- Admin actions go in the same record as logins: who did it (actor), what (reason), to what
-- (identifier).
ALTER TABLE auth_events ADD COLUMN actor text;
ALTER TABLE auth_events DROP CONSTRAINT auth_events_outcome_check;
ALTER TABLE auth_events ADD CONSTRAINT auth_events_outcome_check
    CHECK (outcome IN ('success', 'failure', 'throttled', 'busy', 'error', 'admin'));
