"""Settings from AUTHSVC_* variables, and the secret files of the data dir."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest

from authsvc import settings as config
from authsvc.auth.keyring import KeyFile
from authsvc.cli import secretfiles
from authsvc.db import pool
from authsvc.settings import ConfigError, Settings

GOOD_SECRET = secrets.token_urlsafe(48)


def test_defaults_without_environment():
    s = config.from_env({})
    assert s.database_url is None and s.embedded
    assert (s.host, s.port, s.bcrypt_rounds) == ("127.0.0.1", 8080, 12)
    assert s.data_dir == Path(".authsvc")
    assert s.cors_origins == ()


def test_values_are_parsed():
    s = config.from_env(
        {
            "AUTHSVC_DATABASE_URL": "postgresql://u@db:5432/authsvc",
            "AUTHSVC_PORT": "9000",
            "AUTHSVC_BCRYPT_ROUNDS": "10",
            "AUTHSVC_CORS_ORIGINS": "https://a.example.com, http://localhost:3000/",
            "AUTHSVC_PASSWORD_GRANT": "off",
            "AUTHSVC_TOKEN_SECRET": GOOD_SECRET,
        }
    )
    assert s.port == 9000 and s.bcrypt_rounds == 10 and not s.password_grant
    assert s.cors_origins == ("https://a.example.com", "http://localhost:3000")
    assert not s.embedded


def test_the_breached_password_check_is_off_unless_configured():
    s = config.from_env({})
    assert (s.breached_passwords_url, s.breached_passwords_timeout) == (None, 2.0)
    s = config.from_env({
        "AUTHSVC_BREACHED_PASSWORDS_URL": "https://api.pwnedpasswords.com/",
        "AUTHSVC_BREACHED_PASSWORDS_TIMEOUT": "0.5",
    })
    assert (s.breached_passwords_url, s.breached_passwords_timeout) == ("https://api.pwnedpasswords.com", 0.5)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AUTHSVC_PORT", "eighty"),
        ("AUTHSVC_PORT", "70000"),
        ("AUTHSVC_BCRYPT_ROUNDS", "3"),
        ("AUTHSVC_BCRYPT_ROUNDS", "32"),
        ("AUTHSVC_DATABASE_URL", "mysql://x@y/z"),
        ("AUTHSVC_DATABASE_URL", "postgresql://u:pw@db:abc/authsvc"),
        ("AUTHSVC_DATABASE_URL", "postgresql://u@db1:5432,db2:99999/authsvc"),
        ("AUTHSVC_CORS_ORIGINS", "*"),
        ("AUTHSVC_CORS_ORIGINS", "https://a.example.com/path"),
        ("AUTHSVC_MIGRATE_ON_START", "maybe"),
        ("AUTHSVC_TOKEN_SECRET", "hunter2"),
        ("AUTHSVC_TOKEN_SECRET", "a" * 64),
        ("AUTHSVC_PASSWORD_PEPPER", "correct-horse-battery-staple-123"[:20]),
        ("AUTHSVC_HOST", "  "),
        ("AUTHSVC_LOG_LEVEL", "LOUD"),
        ("AUTHSVC_BREACHED_PASSWORDS_URL", "api.pwnedpasswords.com"),
        ("AUTHSVC_BREACHED_PASSWORDS_TIMEOUT", "0"),
        ("AUTHSVC_NO_SUCH_SETTING", "1"),
    ],
)
def test_bad_value_names_the_variable(var, value):
    with pytest.raises(ConfigError) as err:
        config.from_env({var: value})
    assert err.value.var == var
    assert str(err.value).startswith(f"{var}: ")
    assert "\n" not in str(err.value)


def test_a_bad_secret_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        config.from_env({"AUTHSVC_TOKEN_SECRET": "my-own-secret-value"})
    assert "my-own-secret-value" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db/a",
        "postgresql://u:p%40ss@db:5432/a",
        "postgresql://u@db1:5432,db2:5433/a",
        "postgresql://u@[::1]:5432/a",
        "postgresql://u@[::1]/a",
        "postgresql:///a?host=/run/postgresql",
    ],
)
def test_database_urls_the_driver_takes_are_taken(url):
    assert config.from_env({"AUTHSVC_DATABASE_URL": url}).database_url == url


def test_a_bad_database_url_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        config.from_env({"AUTHSVC_DATABASE_URL": "postgresql://u:hunter2hunter2@db:port/a"})
    assert "hunter2hunter2" not in str(err.value)


def test_cross_checks():
    with pytest.raises(ConfigError, match="AUTHSVC_DB_POOL_MIN"):
        config.from_env({"AUTHSVC_DB_POOL_MIN": "20", "AUTHSVC_DB_POOL_MAX": "5"})
    with pytest.raises(ConfigError, match="AUTHSVC_PASSWORD_PEPPER"):
        config.from_env({"AUTHSVC_TOKEN_SECRET": GOOD_SECRET, "AUTHSVC_PASSWORD_PEPPER": GOOD_SECRET})


def test_behind_pgbouncer_the_pool_keeps_no_statements_and_sends_no_timeout():
    direct = config.from_env({"AUTHSVC_DATABASE_URL": "postgresql://u@db/a"})
    assert (direct.db_pgbouncer, direct.statement_cache_size) == (False, 100)
    assert pool.pool_parameters(direct) == {"application_name": "authsvc", "statement_timeout": "5000"}
    assert direct.migrate_url == "postgresql://u@db/a"
    bounced = config.from_env({
        "AUTHSVC_DATABASE_URL": "postgresql://u@pgbouncer:6432/a",
        "AUTHSVC_DB_PGBOUNCER": "true",
        "AUTHSVC_MIGRATE_DATABASE_URL": "postgresql://u@db/a",
    })
    assert bounced.statement_cache_size == 0
    # PgBouncer refuses every startup parameter it does not track; application_name it does.
    assert pool.pool_parameters(bounced) == {"application_name": "authsvc"}
    assert bounced.migrate_url == "postgresql://u@db/a"
    # A PgBouncer 1.21+ with max_prepared_statements can keep asyncpg's cache.
    assert bounced.replace(db_statement_cache_size=100).statement_cache_size == 100
    assert direct.replace(db_statement_cache_size=0).statement_cache_size == 0


def test_behind_pgbouncer_migrations_on_start_need_a_direct_url():
    bounced = {"AUTHSVC_DATABASE_URL": "postgresql://u@pgbouncer:6432/a", "AUTHSVC_DB_PGBOUNCER": "true"}
    with pytest.raises(ConfigError, match="AUTHSVC_MIGRATE_DATABASE_URL: must be set"):
        config.from_env(bounced)
    # Replicas that leave migrating to a job (which connects directly) need none.
    assert config.from_env({**bounced, "AUTHSVC_MIGRATE_ON_START": "false"}).migrate_database_url is None
    with pytest.raises(ConfigError, match="AUTHSVC_DB_PGBOUNCER"):
        config.from_env({"AUTHSVC_DB_PGBOUNCER": "true", "AUTHSVC_MIGRATE_ON_START": "false"})
    with pytest.raises(ConfigError, match="AUTHSVC_MIGRATE_DATABASE_URL: set only with AUTHSVC_DATABASE_URL"):
        config.from_env({"AUTHSVC_MIGRATE_DATABASE_URL": "postgresql://u@db/a"})
    with pytest.raises(ConfigError, match="AUTHSVC_DB_STATEMENT_CACHE_SIZE"):
        config.from_env({"AUTHSVC_DB_STATEMENT_CACHE_SIZE": "-1"})


def test_the_migration_url_is_masked_like_the_database_url():
    s = config.from_env({
        "AUTHSVC_DATABASE_URL": "postgresql://app:hunter2hunter2@pgbouncer:6432/a",
        "AUTHSVC_MIGRATE_DATABASE_URL": "postgresql://owner:swordfish99@db:5432/a",
    })
    assert config.shown(s, "migrate_database_url") == "postgresql://owner:***@db:5432/a"
    assert "swordfish99" not in repr(s)
    assert config.shown(s.replace(migrate_database_url=None), "migrate_database_url") == (
        "(unset: AUTHSVC_DATABASE_URL's)"
    )


def test_secrets_never_in_repr():
    s = Settings(token_secret=GOOD_SECRET, password_pepper=secrets.token_urlsafe(48))
    assert GOOD_SECRET not in repr(s)


def test_embedded_mode_generates_the_pepper_and_a_signing_key_once(tmp_path):
    s = Settings(data_dir=tmp_path)
    first = secretfiles.resolve(s)
    keys = s.keys_file.read_text()
    again = secretfiles.resolve(s)
    assert first.password_pepper and again.password_pepper == first.password_pepper
    assert s.keys_file.read_text() == keys, "the key file is made once, then reused"
    assert first.token_secret is None, "EdDSA signs with the key file, not a shared secret"
    for path in (tmp_path / "secrets" / "password_pepper", s.keys_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_embedded_hs256_mode_generates_both_secrets_once(tmp_path):
    s = Settings(data_dir=tmp_path, token_algorithm="HS256")
    first = secretfiles.resolve(s)
    again = secretfiles.resolve(s)
    assert first.token_secret and first.password_pepper
    assert first.token_secret != first.password_pepper
    assert (again.token_secret, again.password_pepper) == (first.token_secret, first.password_pepper)
    assert not s.keys_file.exists()
    for name in secretfiles.SECRET_NAMES:
        mode = stat.S_IMODE((tmp_path / "secrets" / name).stat().st_mode)
        assert mode == 0o600


def test_external_database_needs_keys_and_secrets(tmp_path):
    s = Settings(database_url="postgresql://u@db/authsvc", data_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        secretfiles.resolve(s)
    assert err.value.var == "AUTHSVC_SIGNING_KEYS_FILE"
    assert "authsvc keys generate" in str(err.value)
    assert not s.keys_file.exists() and not (tmp_path / "secrets").exists()
    with pytest.raises(ConfigError) as err:
        secretfiles.resolve(s.replace(token_algorithm="HS256"))
    assert err.value.var == "AUTHSVC_TOKEN_SECRET"


def test_external_database_with_a_key_file_needs_the_pepper(tmp_path):
    doc = KeyFile.load(tmp_path / "keys.json")
    doc.generate("EdDSA", activate=True)
    doc.save()
    s = Settings(database_url="postgresql://u@db/authsvc", data_dir=tmp_path, signing_keys_file=doc.path)
    with pytest.raises(ConfigError) as err:
        secretfiles.resolve(s)
    assert err.value.var == "AUTHSVC_PASSWORD_PEPPER"
    pepper = secrets.token_urlsafe(48)
    assert secretfiles.resolve(s.replace(password_pepper=pepper)).password_pepper == pepper


def test_secret_files_are_read_and_checked(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token_secret").write_text(GOOD_SECRET + "\n")
    (tmp_path / "secrets" / "password_pepper").write_text("short\n")
    s = Settings(database_url="postgresql://u@db/authsvc", data_dir=tmp_path, token_algorithm="HS256")
    with pytest.raises(ConfigError) as err:
        secretfiles.resolve(s)
    assert err.value.var == "AUTHSVC_PASSWORD_PEPPER"


def test_environment_wins_over_files(tmp_path):
    s = secretfiles.resolve(Settings(data_dir=tmp_path))
    chosen = secrets.token_urlsafe(48)
    again = secretfiles.resolve(Settings(data_dir=tmp_path, token_secret=chosen))
    assert again.token_secret == chosen
    assert again.password_pepper == s.password_pepper
