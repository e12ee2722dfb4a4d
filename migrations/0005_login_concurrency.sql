-- Logins under concurrency: a pair whose address the account logged in from may have several
-- checks in flight at once (a service whose workers share one credential), so the in-flight
-- hold counts its attempts; and signups get a budget per address beside the login budgets.

-- held_until is when the newest claim's hold expires; in_flight counts the claims that have
-- not reported an outcome yet. Once held_until has passed, in_flight counts for nothing (the
-- process that held them died), so a crash never leaves a pair closed for longer than a hold.
ALTER TABLE login_backoff ADD COLUMN in_flight integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0);

-- scope 'signup': key is the client address, one token per signup attempt.
ALTER TABLE login_budgets DROP CONSTRAINT login_budgets_scope_check;
ALTER TABLE login_budgets ADD CONSTRAINT login_budgets_scope_check CHECK (scope IN ('account', 'address', 'signup'));
