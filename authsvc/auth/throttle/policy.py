"""The budgets as numbers: what the settings allow, and the key a login identifier counts under.

Pure data, no database: the rest of the package reads these limits, none of it changes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from authsvc.settings import Settings


def normalise(identifier: str) -> str:
    """The budget key of a login identifier: the key its account is looked up by."""
    from authsvc.auth.emails import lookup_key

    return lookup_key(identifier)


@dataclass(frozen=True)
class Bucket:
    scope: str
    capacity: float
    rate: float  # tokens a second


@dataclass(frozen=True)
class Limits:
    backoff_base: timedelta
    backoff_cap: timedelta
    failure_window: timedelta
    account: Bucket
    address: Bucket
    address_block: timedelta
    signup: Bucket
    known_address_age: timedelta
    events_kept: timedelta
    memory: float  # seconds a refusal is repeated from memory before the database is asked again

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        # A bucket of capacity C refilled at R lets through at most C + R*T in any period T:
        # a fifth of the limit as burst and four fifths as refill keep every hour (minute)
        # at or under the configured number.
        per_hour = s.account_max_failures_per_hour
        per_minute = s.address_max_failures_per_minute
        signups = s.signup_max_per_hour
        return cls(
            backoff_base=timedelta(milliseconds=s.login_backoff_base_ms),
            backoff_cap=timedelta(milliseconds=s.login_backoff_max_ms),
            failure_window=timedelta(seconds=s.login_failure_window),
            account=Bucket("account", max(1.0, per_hour / 5), per_hour * 4 / 5 / 3600),
            address=Bucket("address", max(1.0, per_minute / 5), per_minute * 4 / 5 / 60),
            address_block=timedelta(seconds=s.address_block_seconds),
            signup=Bucket("signup", max(1.0, signups / 5), signups * 4 / 5 / 3600),
            known_address_age=timedelta(days=s.known_address_days),
            events_kept=timedelta(days=s.auth_events_days),
            memory=s.throttle_memory_ms / 1000,
        )
