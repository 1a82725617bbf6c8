"""Password hashing: argon2id parameters, rehash on change, Werkzeug hash upgrade, dummy verify."""

from __future__ import annotations

from typing import Any

from argon2 import extract_parameters
from argon2.low_level import Type
from flask import Flask
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from tokenserver.config import Settings
from tokenserver.extensions import db
from tokenserver.models import User
from tokenserver.passwords import Passwords, current_passwords

from .conftest import PASSWORD, Actions


def test_production_defaults_meet_owasp_minimum() -> None:
    settings = Settings()
    hashed = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    ).hash("a password to hash")
    params = extract_parameters(hashed)
    assert params.type is Type.ID
    assert params.memory_cost >= 19 * 1024
    assert params.time_cost >= 2
    assert params.parallelism >= 1


def test_hash_uses_the_configured_parameters() -> None:
    params = extract_parameters(Passwords(3, 2048, 2).hash("pw"))
    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 2048, 2)


def test_verify_accepts_right_and_refuses_wrong() -> None:
    passwords = Passwords(1, 1024, 1)
    stored = passwords.hash("right password")
    assert passwords.verify(stored, "right password").ok
    assert not passwords.verify(stored, "wrong password").ok
    assert not passwords.verify("not a hash at all", "right password").ok


def test_changed_parameters_ask_for_a_rehash() -> None:
    old = Passwords(1, 1024, 1).hash("pw-pw-pw")
    verdict = Passwords(2, 2048, 1).verify(old, "pw-pw-pw")
    assert verdict.ok
    assert verdict.new_hash is not None
    assert extract_parameters(verdict.new_hash).time_cost == 2
    assert Passwords(1, 1024, 1).verify(old, "pw-pw-pw").new_hash is None


def _stored_hash(app: Flask, username: str) -> str:
    with app.app_context():
        return db.session.scalars(select(User.password_hash).where(User.username == username)).one()


def _set_hash(app: Flask, username: str, value: str) -> None:
    with app.app_context():
        user = db.session.scalars(select(User).where(User.username == username)).one()
        user.password_hash = value
        db.session.commit()


def test_login_rehashes_when_parameters_changed(make_app: Any) -> None:
    old_app = make_app()
    actions = Actions(old_app, old_app.test_client())
    actions.user("erin")
    before = _stored_hash(old_app, "erin")
    new_app = make_app(argon2_time_cost=2)
    new_actions = Actions(new_app, new_app.test_client())
    response = new_actions.token(new_actions.oauth_client(), "erin")
    assert response.status_code == 200
    after = _stored_hash(new_app, "erin")
    assert after != before
    assert extract_parameters(after).time_cost == 2


def test_werkzeug_hashes_verify_and_upgrade_to_argon2id(app: Flask, actions: Actions) -> None:
    actions.user("frank")
    for method in ("scrypt", "pbkdf2:sha256"):
        _set_hash(app, "frank", generate_password_hash(PASSWORD, method=method))
        wrong = actions.token(actions.oauth_client(), "frank", password="not the password")
        assert wrong.status_code == 400
        assert _stored_hash(app, "frank").startswith(method.split(":")[0])
        response = actions.token(actions.oauth_client(), "frank")
        assert response.status_code == 200
        assert _stored_hash(app, "frank").startswith("$argon2id$")


def test_unknown_username_runs_a_full_dummy_verification(app: Flask, actions: Actions) -> None:
    oauth_client = actions.oauth_client()
    with app.app_context():
        before = current_passwords().dummy_verifications
    response = actions.token(oauth_client, "nobody-here")
    with app.app_context():
        after = current_passwords().dummy_verifications
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"
    assert after == before + 1


def test_unknown_user_and_wrong_password_answer_identically(actions: Actions) -> None:
    actions.user("gina")
    oauth_client = actions.oauth_client()
    unknown = actions.token(oauth_client, "nobody-here")
    wrong = actions.token(oauth_client, "gina", password="not the password")
    assert unknown.status_code == wrong.status_code == 400
    assert unknown.json == wrong.json
