"""Settings: defaults from the README, and one clear line naming a bad variable."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from tokenserver.config import ConfigError, Settings, unknown_variables

from .conftest import ROOT


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({}, instance_path="/srv/instance")
    assert settings.issuer == "http://localhost:8000"
    assert settings.audience == settings.issuer
    assert settings.access_token_ttl == 900
    assert settings.refresh_token_ttl == 2_592_000
    assert settings.registration_open is True
    assert settings.ratelimit_storage_uri == "memory://"
    assert settings.ratelimit_enabled is True
    assert settings.database_url == "sqlite:////srv/instance/tokenserver.db"
    assert settings.dpop_nonce is False


def test_values_are_parsed_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TOKENSERVER_ISSUER": "https://auth.example.com/",
            "TOKENSERVER_ACCESS_TOKEN_TTL": "60",
            "TOKENSERVER_REGISTRATION_OPEN": "false",
            "TOKENSERVER_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
            "TOKENSERVER_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "TOKENSERVER_DPOP_NONCE": "true",
        }
    )
    assert settings.issuer == "https://auth.example.com"
    assert settings.audience == "https://auth.example.com"
    assert settings.access_token_ttl == 60
    assert settings.registration_open is False
    assert settings.ratelimit_storage_uri.startswith("redis://")
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.dpop_nonce is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENSERVER_ACCESS_TOKEN_TTL", "soon"),
        ("TOKENSERVER_ACCESS_TOKEN_TTL", "-5"),
        ("TOKENSERVER_REFRESH_TOKEN_TTL", "0"),
        ("TOKENSERVER_REGISTRATION_OPEN", "maybe"),
        ("TOKENSERVER_RATELIMIT_ENABLED", "2"),
        ("TOKENSERVER_DPOP_NONCE", "sometimes"),
        ("TOKENSERVER_ISSUER", "not a url"),
        ("TOKENSERVER_ISSUER", "ftp://example.com"),
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "mongodb://x"),
        # redis-py would refuse these only in the first worker to connect, with a traceback.
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:port/0"),
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:99999"),
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/-1"),
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/cache"),
        ("TOKENSERVER_DATABASE_URL", "::nonsense::"),
        ("TOKENSERVER_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:99999/db"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: value})
    assert name in str(excinfo.value)


# gunicorn as deployed, loading its settings and exiting before it would fork a worker.
_CHECK_CONFIG = [
    sys.executable,
    "-m",
    "gunicorn",
    "--config",
    "gunicorn.conf.py",
    "--check-config",
    "wsgi:app",
]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_refuses_bad_setting_with_one_line() -> None:
    result = _run(
        [sys.executable, "-m", "tokenserver", "users", "list"],
        {"TOKENSERVER_ACCESS_TOKEN_TTL": "abc"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "TOKENSERVER_ACCESS_TOKEN_TTL" in lines[0]
    assert "Traceback" not in result.stderr


def test_gunicorn_refuses_bad_setting_with_one_line() -> None:
    result = _run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        {"TOKENSERVER_REGISTRATION_OPEN": "perhaps", "PORT": "1"},
    )
    assert result.returncode != 0
    assert "TOKENSERVER_REGISTRATION_OPEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_gunicorn_without_our_config_refuses_bad_setting_without_a_traceback(
    tmp_path: Path,
) -> None:
    # Run from another folder, gunicorn finds no gunicorn.conf.py: the worker loading
    # wsgi.py is the first to read the settings, and must stop the server just as plainly.
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT), "-b", "127.0.0.1:0", "wsgi:app"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "TOKENSERVER_ACCESS_TOKEN_TTL": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    named = [line for line in result.stderr.splitlines() if "TOKENSERVER_" in line]
    assert len(named) == 1 and "TOKENSERVER_ACCESS_TOKEN_TTL" in named[0], result.stderr


@pytest.mark.parametrize(
    "issuer", ["http://example.com", "http://auth.example.com:8000", "http://10.0.0.5"]
)
def test_a_plain_http_issuer_off_loopback_is_refused(issuer: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_ISSUER": issuer})
    assert "TOKENSERVER_ISSUER" in str(excinfo.value)
    assert "https" in str(excinfo.value)


@pytest.mark.parametrize(
    "issuer",
    ["https://auth.example.com?tenant=1", "https://auth.example.com/#top", "https://a.example/x?"],
)
def test_an_issuer_with_a_query_or_fragment_is_refused(issuer: str) -> None:
    # RFC 8414 §2, OpenID Connect Discovery §3: no query or fragment; every endpoint we publish
    # is the issuer followed by a path, which would land inside them.
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_ISSUER": issuer})
    assert "TOKENSERVER_ISSUER" in str(excinfo.value)
    assert "query" in str(excinfo.value)


@pytest.mark.parametrize(
    "issuer",
    [
        "https://auth example.com",  # a space in the host
        'https://auth.example.com/"t',  # would end a quoted header value
        "https://auth\\example.com",
        "http://localhost:99999",  # a port out of range, read only when used
        "http://localhost:0",
        "http://localhost:port",
        "https://:443",  # no host at all
        "https://admin:secret@auth.example.com",  # published in every token
        "https://admin@auth.example.com",
    ],
)
def test_an_issuer_that_is_no_usable_url_is_refused(issuer: str) -> None:
    # Every URL we publish starts with it, so is as broken as it is.
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_ISSUER": issuer})
    assert "TOKENSERVER_ISSUER" in str(excinfo.value)


@pytest.mark.parametrize(
    "issuer", ["http://localhost:8000", "http://127.0.0.1:9000", "http://[::1]:8000"]
)
def test_a_plain_http_issuer_on_loopback_is_allowed(issuer: str) -> None:
    assert Settings.from_env({"TOKENSERVER_ISSUER": issuer}).issuer == issuer


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TOKENSERVER_ARGON2_MEMORY_KIB": "1"}, "TOKENSERVER_ARGON2_MEMORY_KIB"),
        ({"TOKENSERVER_ARGON2_PARALLELISM": "99999999"}, "TOKENSERVER_ARGON2_PARALLELISM"),
        ({"TOKENSERVER_ARGON2_TIME_COST": "4294967296"}, "TOKENSERVER_ARGON2_TIME_COST"),
    ],
)
def test_argon2_parameters_the_library_refuses_name_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env(env)
    assert named in str(excinfo.value)
    assert "32-bit" not in str(excinfo.value)


@pytest.mark.parametrize("value", ["abc", "1.5", "١٢", "-3"])
def test_bad_numbers_are_explained_in_our_words(value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_ACCESS_TOKEN_TTL": value})
    assert "expected a positive whole number" in str(excinfo.value)
    assert "literal" not in str(excinfo.value) and "int()" not in str(excinfo.value)


@pytest.mark.parametrize("name", ["TOKENSERVER_ACCESS_TOKEN_TTL", "TOKENSERVER_KEY_CACHE_SECONDS"])
def test_numbers_past_any_date_are_refused(name: str) -> None:
    # Far enough to overflow a date computed from them (timedelta stops at 1e9 days).
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: "100000000000000"})
    assert name in str(excinfo.value) and "at most" in str(excinfo.value)
    assert Settings.from_env({name: "10000000000"})  # three centuries: still a date


def test_a_refused_secret_is_never_shown() -> None:
    # A key being rotated in, with the old one cut short: the new one must not reach the logs.
    good = base64.b64encode(bytes(range(32))).decode()
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_KEY_ENCRYPTION_KEY": f"{good},{good[:-2]}"})
    message = str(excinfo.value)
    assert message.startswith("TOKENSERVER_KEY_ENCRYPTION_KEY is not valid:")
    assert good[:10] not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:S3cretPw@db:5432x/x",  # a port that is not a number
        "postgres://app:S3cretPw@127.0.0.1:5432/test",  # as platforms write DATABASE_URL
        "mysql://app:S3cretPw@127.0.0.1/x",  # a driver we do not ship
        "postgres://app:S3cretPw/x@db.example.com/prod",  # a "/" in it: no valid URL at all
        "postgres://app:S3cretPw@x@db.example.com/prod",  # an "@" in it
    ],
)
def test_a_refused_database_url_names_the_problem_and_hides_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_DATABASE_URL": url})
    message = str(excinfo.value)
    assert "TOKENSERVER_DATABASE_URL='" in message and "app:***@" in message
    assert "S3cretPw" not in message
    assert "postgresql+psycopg://" in message  # what to write instead
    assert "literal" not in message and "plugin" not in message


def test_a_password_in_a_query_is_hidden() -> None:
    url = "postgres://app@db.example.com/prod?sslmode=require&password=S3cretPw"
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_DATABASE_URL": url})
    assert "S3cretPw" not in str(excinfo.value) and "password=***" in str(excinfo.value)


@pytest.mark.parametrize("audience", ['https://api.example/a"b', "https://api.example/a\\b", "a b"])
def test_an_audience_that_would_break_a_header_is_refused(audience: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_AUDIENCE": audience})
    assert "TOKENSERVER_AUDIENCE" in str(excinfo.value)


def test_a_redis_url_password_is_hidden_too() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"TOKENSERVER_RATELIMIT_STORAGE_URI": "rediz://:hunter2@h:6379/0"})
    assert "hunter2" not in str(excinfo.value) and ":***@h" in str(excinfo.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TOKENSERVER_ISSUER": "http://example.com"}, "TOKENSERVER_ISSUER"),
        ({"TOKENSERVER_ARGON2_MEMORY_KIB": "1"}, "TOKENSERVER_ARGON2_MEMORY_KIB"),
        ({"TOKENSERVER_DATABASE_URL": "postgres://u:pw@127.0.0.1/x"}, "TOKENSERVER_DATABASE_URL"),
    ],
)
@pytest.mark.parametrize("program", ["cli", "gunicorn"])
def test_start_up_refusals_are_one_line_in_the_cli_and_gunicorn(
    env: dict[str, str], named: str, program: str
) -> None:
    args = {
        "cli": [sys.executable, "-m", "tokenserver", "users", "list"],
        "gunicorn": [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
    }[program]
    result = _run(args, {**env, "PORT": "1"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Worker failed to boot" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]


def test_unknown_settings_are_listed_with_the_closest_name() -> None:
    lines = unknown_variables(
        {"TOKENSERVER_REGISTRATON_OPEN": "false", "TOKENSERVER_ISSUER": "x", "OTHER": "y"}
    )
    assert lines == [
        "Warning: TOKENSERVER_REGISTRATON_OPEN is not a tokenserver setting and is ignored; "
        "did you mean TOKENSERVER_REGISTRATION_OPEN?"
    ]


def test_gunicorn_warns_once_of_an_unknown_setting() -> None:
    result = _run(
        _CHECK_CONFIG,
        {"TOKENSERVER_ACESS_TOKEN_TTL": "60"},
    )
    assert [line for line in result.stderr.splitlines() if "ACESS" in line] == [
        "Warning: TOKENSERVER_ACESS_TOKEN_TTL is not a tokenserver setting and is ignored; "
        "did you mean TOKENSERVER_ACCESS_TOKEN_TTL?"
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
    ],
)
def test_port_and_worker_count_are_settings_too(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env(env)
    assert str(excinfo.value).startswith(f"{named}=")
    settings = Settings.from_env({"PORT": "8123", "WEB_CONCURRENCY": "3"})
    assert (settings.port, settings.web_concurrency) == (8123, 3)


def test_gunicorn_refuses_a_bad_port_with_one_line() -> None:
    result = _run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        {"PORT": "eighty"},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: PORT='eighty' is not valid: expected a TCP port from 1 to 65535"
    ]


def test_gunicorn_refuses_an_unusable_metrics_directory_with_one_line() -> None:
    result = _run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        {"PROMETHEUS_MULTIPROC_DIR": "/proc/nope", "PORT": "1"},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: PROMETHEUS_MULTIPROC_DIR='/proc/nope' ")


def _procfile_web() -> list[str]:
    """The Procfile's `web:` command, run by this test's Python (`gunicorn` is `-m gunicorn`)."""
    [line] = [x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:")]
    program, *args = line.removeprefix("web:").split()
    return [sys.executable, *(["-m", "gunicorn"] if program == "gunicorn" else []), *args]


# --check-config: should a refusal ever be missed, gunicorn exits instead of forking the workers.
@pytest.mark.parametrize("workers", ["abc", "-1", "0", "1001", "1000000"])
def test_the_web_process_refuses_a_bad_worker_count_with_one_line(workers: str) -> None:
    result = _run([*_procfile_web(), "--check-config"], {"WEB_CONCURRENCY": workers})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: WEB_CONCURRENCY={workers!r} is not valid: expected a number of workers "
        "from 1 to 1,000"
    ]


@pytest.mark.parametrize("workers", ["", "  "])
def test_the_web_process_takes_a_blank_worker_count_as_unset(workers: str) -> None:
    result = _run([*_procfile_web(), "--check-config"], {"WEB_CONCURRENCY": workers})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_gunicorn_conf_refuses_too_many_workers_too() -> None:
    result = _run(
        _CHECK_CONFIG,
        {"WEB_CONCURRENCY": "1001"},
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: WEB_CONCURRENCY='1001' is not valid")


def test_the_web_process_serves_with_good_settings() -> None:
    result = _run([*_procfile_web(), "--check-config"], {"WEB_CONCURRENCY": "1000"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
