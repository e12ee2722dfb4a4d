-- Users, their todos, and the failed-login counters behind the login backoff.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash text        NOT NULL,
    first_name    text        CHECK (length(first_name) <= 100),
    last_name     text        CHECK (length(last_name) <= 100),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Case-insensitive uniqueness lives in the database, so parallel signups cannot race past it.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE todos (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id   bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    text       text        NOT NULL CHECK (length(text) BETWEEN 1 AND 1000),
    completed  boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX todos_owner_id_idx ON todos (owner_id, id);

-- One row per (login identifier as typed, lower-cased; client address). Unknown identifiers
-- get rows too, so throttling cannot tell which accounts exist. next_attempt_at is the
-- backoff (only a success after it can clear it); held_until covers an attempt in flight.
CREATE TABLE login_backoff (
    identifier      text        NOT NULL,
    address         text        NOT NULL,
    failures        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    held_until      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (identifier, address)
);

CREATE INDEX login_backoff_updated_at_idx ON login_backoff (updated_at);
