"""Private keys at rest: AES-GCM under the key-encryption key, rewrapping, start-up checks."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, delete, select, text

from tokenserver import create_app
from tokenserver.config import ConfigError, Settings
from tokenserver.extensions import db
from tokenserver.keywrap import KeyEncryptionError, KeyWrapper, check_at_startup
from tokenserver.models import SigningKey

from .conftest import FAST_HASHING, ROOT, Actions, migrated_database

OLD = os.urandom(32)
NEW = os.urandom(32)


def b64(*keys: bytes) -> str:
    return ",".join(base64.b64encode(key).decode() for key in keys)


@pytest.fixture(scope="module")
def own_database(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database of this module's own: the keys it encrypts must not reach other tests."""
    path = tmp_path_factory.mktemp("keywrap") / "keys.db"
    yield from migrated_database(base_settings.database_url, path)


@pytest.fixture
def app_with(own_database: str, make_app: Any) -> Iterator[Any]:
    """Apps on the module's database with the given key-encryption keys; no keys at first."""
    engine = create_engine(own_database)
    with engine.begin() as conn:
        conn.execute(delete(SigningKey.__table__))
    yield lambda *keys: make_app(database_url=own_database, key_encryption_keys=keys)
    with engine.begin() as conn:
        for table in ("token_records", "token_families", "clients", "users", "signing_keys"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


def stored_keys(app: Flask) -> dict[str, str]:
    with app.app_context():
        return dict(db.session.execute(select(SigningKey.kid, SigningKey.private_key)).all())


def test_wrapped_key_opens_only_under_its_own_kid_and_key() -> None:
    wrapper = KeyWrapper((NEW,))
    sealed = wrapper.wrap("kid-1", "-----BEGIN PRIVATE KEY-----\nabc\n")
    assert "BEGIN" not in sealed and sealed.startswith("aesgcm:")
    assert wrapper.unwrap("kid-1", sealed).startswith("-----BEGIN")
    with pytest.raises(KeyEncryptionError):
        wrapper.unwrap("kid-2", sealed)  # copied onto another key's row
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(KeyEncryptionError):
        wrapper.unwrap("kid-1", tampered)
    with pytest.raises(KeyEncryptionError, match="TOKENSERVER_KEY_ENCRYPTION_KEY"):
        KeyWrapper((OLD,)).unwrap("kid-1", sealed)
    with pytest.raises(KeyEncryptionError, match="not set"):
        KeyWrapper().unwrap("kid-1", sealed)


def test_private_keys_are_stored_encrypted_and_still_sign(app_with: Any) -> None:
    app = app_with(NEW)
    actions = Actions(app, app.test_client())
    login = actions.login("alice")
    [stored] = stored_keys(app).values()
    assert stored.startswith("aesgcm:")
    assert "PRIVATE KEY" not in stored
    me = actions.client.get("/users/me", headers=Actions.bearer(login["access_token"]))
    assert me.status_code == 200


def test_a_wrong_or_missing_key_stops_start_up_with_one_line(app_with: Any) -> None:
    app_with(OLD).extensions["tokenserver.keyring"].signing_key()
    for keys, words in (((NEW,), "cannot decrypt"), ((), "not set")):
        with pytest.raises(ConfigError) as excinfo:
            app_with(*keys)
        message = str(excinfo.value)
        assert "TOKENSERVER_KEY_ENCRYPTION_KEY" in message and words in message
        assert "\n" not in message


def test_keys_sealed_under_another_key_answer_503_and_fail_readiness(
    app_with: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The start-up check passed (nothing stored yet, or the database was down at boot); then
    # keys were written, or rewrapped, under a key-encryption key this node lacks.
    app = app_with(NEW)
    app_with(OLD).extensions["tokenserver.keyring"].signing_key()
    actions = Actions(app, app.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client("alice-app")
    caplog.set_level("ERROR", logger="tokenserver.errors")
    for _ in range(3):
        response = actions.token(oauth_client)
        assert response.status_code == 503, response.json
        assert response.json["error"] == "service_unavailable"
        assert response.headers["Retry-After"]
    lines = [r.getMessage() for r in caplog.records if r.name == "tokenserver.errors"]
    assert lines and all("TOKENSERVER_KEY_ENCRYPTION_KEY" in line for line in lines)
    assert not any(r.exc_info for r in caplog.records)
    assert b64(OLD) not in caplog.text and b64(NEW) not in caplog.text
    jwks = actions.client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200  # the public keys are stored in the clear
    assert [key["kid"] for key in jwks.json["keys"]] == list(stored_keys(app))
    ready = actions.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["reason"] == "signing key cannot be opened"


def test_rewrap_moves_every_key_to_the_new_key_encryption_key(app_with: Any) -> None:
    first = app_with(OLD)
    first.extensions["tokenserver.keyring"].signing_key()
    # While rotating, both keys are given, the new one first: any opens, the first wraps.
    both = app_with(NEW, OLD)
    result = both.test_cli_runner().invoke(args=["keys", "rewrap"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1" in result.stdout
    [stored] = stored_keys(both).values()
    assert KeyWrapper((NEW,)).is_wrapped_by_first(stored)
    assert app_with(NEW).extensions["tokenserver.keyring"].signing_key().is_private
    with pytest.raises(ConfigError):
        app_with(OLD)


def test_rewrap_encrypts_keys_stored_before_encryption_was_switched_on(app_with: Any) -> None:
    plain = app_with()
    kid = plain.extensions["tokenserver.keyring"].signing_key().kid
    assert "PRIVATE KEY" in stored_keys(plain)[kid]
    encrypted = app_with(NEW)  # plain keys still open, so the switch needs no downtime
    result = encrypted.test_cli_runner().invoke(args=["keys", "rewrap"])
    assert result.exit_code == 0, result.output
    assert stored_keys(encrypted)[kid].startswith("aesgcm:")
    assert app_with(NEW).extensions["tokenserver.keyring"].signing_key().kid == kid


def test_rewrap_without_a_key_is_refused(app_with: Any) -> None:
    result = app_with().test_cli_runner().invoke(args=["keys", "rewrap"])
    assert result.exit_code == 1
    assert "TOKENSERVER_KEY_ENCRYPTION_KEY" in result.output


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PORT": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "tokenserver", "keys", "list"],
        ["-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
    ],
    ids=["cli", "gunicorn"],
)
def test_cli_and_gunicorn_refuse_a_wrong_key_with_one_line(
    app_with: Any, own_database: str, command: list[str]
) -> None:
    app_with(OLD).extensions["tokenserver.keyring"].signing_key()
    env = {"TOKENSERVER_DATABASE_URL": own_database, "TOKENSERVER_KEY_ENCRYPTION_KEY": b64(NEW)}
    result = _run([sys.executable, *command], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: TOKENSERVER_KEY_ENCRYPTION_KEY cannot decrypt")
    assert "Traceback" not in result.stderr


def test_an_unset_key_is_one_warning_line(own_database: str) -> None:
    result = _run(
        [sys.executable, "-m", "tokenserver", "keys", "list"],
        {"TOKENSERVER_DATABASE_URL": own_database},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "Warning: TOKENSERVER_KEY_ENCRYPTION_KEY is not set: "
        "private signing keys are stored unencrypted",
        "no signing keys yet: the server makes its first one when first needed "
        "(the first token, or the first JWKS served)",  # a new database
    ]
    assert check_at_startup(Settings(database_url=own_database, key_encryption_keys=(NEW,))) is None


def test_a_bad_key_encryption_key_value_names_the_variable() -> None:
    for raw in ("not base64!", base64.b64encode(b"short").decode(), b64(NEW) + ",x"):
        with pytest.raises(ConfigError, match="TOKENSERVER_KEY_ENCRYPTION_KEY"):
            Settings.from_env({"TOKENSERVER_KEY_ENCRYPTION_KEY": raw})
    assert Settings.from_env(
        {"TOKENSERVER_KEY_ENCRYPTION_KEY": b64(NEW, OLD)}
    ).key_encryption_keys == (NEW, OLD)
    assert b64(NEW) not in repr(Settings(key_encryption_keys=(NEW,)))


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    app = create_app(Settings(database_url=f"sqlite:///{path}", **FAST_HASHING), migrations=True)
    with app.app_context():
        upgrade()
        db.engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # WAL and shared-memory files exist while it is open
        conn.execute(text("PRAGMA journal_mode=WAL"))
        conn.execute(
            text(
                "INSERT INTO users (username, username_key, password_hash, "
                "disabled, created_at) VALUES ('a', 'a', 'x', 0, '2026-01-01')"
            )
        )
        conn.commit()
        for name in ("fresh.db-wal", "fresh.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    engine.dispose()


def test_a_relative_sqlite_path_is_created_owner_only_where_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flask-SQLAlchemy opens a relative path under the instance folder: the owner-only file
    # must be made there too, not left empty in the working folder beside a world-readable one.
    instance, work = tmp_path / "instance", tmp_path / "work"
    instance.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    environ = {"TOKENSERVER_DATABASE_URL": "sqlite:///relative.db"}
    settings = Settings.from_env(environ, instance_path=str(instance))
    assert settings.database_url == f"sqlite:///{instance / 'relative.db'}"
    app = create_app(Settings(**{**settings.__dict__, **FAST_HASHING}), migrations=True)
    with app.app_context():
        upgrade()
        db.engine.dispose()
    assert stat.S_IMODE((instance / "relative.db").stat().st_mode) == 0o600
    assert list(work.iterdir()) == []


def test_gunicorn_warns_once_as_a_json_line_when_the_key_is_unset(live_server: Any) -> None:
    import json

    warnings = [
        json.loads(line)
        for line in live_server.log_lines("error")
        if "TOKENSERVER_KEY_ENCRYPTION_KEY" in line
    ]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "is not set" in warnings[0]["message"]
