-- Login sessions and their one-use refresh tokens.

CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),  -- last login or refresh: the idle timeout
    expires_at     timestamptz NOT NULL,                -- the absolute lifetime
    revoked_at     timestamptz,
    revoked_reason text
);

CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Only a SHA-256 of each refresh token is stored: they are 256 random bits, so a fast hash
-- is enough, and a stolen table holds nothing that can be presented.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);

CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
