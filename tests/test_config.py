"""Settings: defaults from API.md, and one clear line naming a bad variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenserver.config import ConfigError, Settings

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


def test_values_are_parsed_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TOKENSERVER_ISSUER": "https://auth.example.com/",
            "TOKENSERVER_ACCESS_TOKEN_TTL": "60",
            "TOKENSERVER_REGISTRATION_OPEN": "false",
            "TOKENSERVER_RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
            "TOKENSERVER_DATABASE_URL": "postgresql+psycopg://u@h/db",
        }
    )
    assert settings.issuer == "https://auth.example.com"
    assert settings.audience == "https://auth.example.com"
    assert settings.access_token_ttl == 60
    assert settings.registration_open is False
    assert settings.ratelimit_storage_uri.startswith("redis://")
    assert settings.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENSERVER_ACCESS_TOKEN_TTL", "soon"),
        ("TOKENSERVER_ACCESS_TOKEN_TTL", "-5"),
        ("TOKENSERVER_REFRESH_TOKEN_TTL", "0"),
        ("TOKENSERVER_REGISTRATION_OPEN", "maybe"),
        ("TOKENSERVER_RATELIMIT_ENABLED", "2"),
        ("TOKENSERVER_ISSUER", "not a url"),
        ("TOKENSERVER_ISSUER", "ftp://example.com"),
        ("TOKENSERVER_RATELIMIT_STORAGE_URI", "mongodb://x"),
        ("TOKENSERVER_DATABASE_URL", "::nonsense::"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: value})
    assert name in str(excinfo.value)


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
        [sys.executable, "-m", "tokenserver.cli", "users", "list"],
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
