"""POST /users and GET /users/me."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tokenserver.extensions import db
from tokenserver.models import User

from .conftest import PASSWORD, Actions
from .helpers import BARE_CHALLENGE


def _user_count(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(User)) or 0)


def test_signup_returns_the_new_user(client: FlaskClient) -> None:
    response = client.post("/users", json={"username": "Alice.B_1-x", "password": PASSWORD})
    assert response.status_code == 201
    body = response.json
    assert set(body) == {"id", "username", "disabled", "created_at"}
    assert body["username"] == "Alice.B_1-x"
    assert body["disabled"] is False
    assert body["created_at"].endswith("Z")
    assert response.headers["Location"].endswith("/users/me")


def test_signup_accepts_a_form_body(client: FlaskClient) -> None:
    response = client.post("/users", data={"username": "bob", "password": PASSWORD})
    assert response.status_code == 201
    assert response.json["username"] == "bob"


def test_password_is_stored_only_as_argon2id(app: Flask, client: FlaskClient) -> None:
    client.post("/users", json={"username": "carol", "password": PASSWORD})
    with app.app_context():
        stored = db.session.scalars(select(User.password_hash)).one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


@pytest.mark.parametrize("other", ["alice", "ALICE", "Alice", "aLiCe"])
def test_duplicate_username_in_any_case_is_taken(client: FlaskClient, other: str) -> None:
    assert (
        client.post("/users", json={"username": "alice", "password": PASSWORD}).status_code == 201
    )
    response = client.post("/users", json={"username": other, "password": PASSWORD})
    assert response.status_code == 409
    assert response.json["error"] == "username_taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": PASSWORD}, "username"),
        ({"username": "alice"}, "password"),
        ({"username": "al", "password": PASSWORD}, "username"),
        ({"username": "a" * 65, "password": PASSWORD}, "username"),
        ({"username": "al ice", "password": PASSWORD}, "username"),
        ({"username": "alice\n", "password": PASSWORD}, "username"),
        ({"username": "ålice", "password": PASSWORD}, "username"),
        ({"username": "alice@x", "password": PASSWORD}, "username"),
        ({"username": 123, "password": PASSWORD}, "username"),
        ({"username": ["alice"], "password": PASSWORD}, "username"),
        ({"username": "alice", "password": "short"}, "password"),
        ({"username": "alice", "password": "x" * 1025}, "password"),
        ({"username": "alice", "password": "password"}, "password"),
        ({"username": "alice", "password": "12345678"}, "password"),
        ({"username": "alice", "password": "qwertyuiop"}, "password"),
        ({"username": "alice", "password": 12345678}, "password"),
        ({"username": "alice", "password": None}, "password"),
        ({"username": "alice", "password": PASSWORD, "admin": True}, "admin"),
    ],
)
def test_invalid_signup_names_the_field_and_writes_nothing(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/users", json=body)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert field in response.json["error_description"]
    assert _user_count(app) == 0


def test_longest_allowed_password_is_accepted(client: FlaskClient) -> None:
    password = "Zq9!" * 256
    response = client.post("/users", json={"username": "longpw", "password": password})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"a string"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        # In UTF-16 the character before the quote ends in a backslash byte, hiding the brackets
        # after it from a count made on the bytes.
        (
            ('{"username": "a\u5c00", "password": ' + "[" * 3000 + "]" * 3000 + "}").encode(
                "utf-16-le"
            ),
            "application/json",
            400,
        ),
        (b"username=alice", "text/plain", 415),
        (b"\xff\xfe\x00garbage", "application/octet-stream", 415),
    ],
)
def test_hostile_bodies_get_json_errors(
    app: Flask, client: FlaskClient, data: bytes, content_type: str, status: int
) -> None:
    response = client.post("/users", data=data, content_type=content_type)
    assert response.status_code == status
    assert response.is_json
    assert set(response.json) == {"error", "error_description"}
    assert _user_count(app) == 0


def test_repeated_form_field_is_refused(client: FlaskClient) -> None:
    response = client.post(
        "/users",
        data="username=a1b&username=c2d&password=" + PASSWORD.replace(" ", "+"),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400
    assert "username" in response.json["error_description"]


def test_a_form_that_is_not_utf8_is_named_as_such(app: Flask, client: FlaskClient) -> None:
    # Werkzeug parses it as an empty form: the answer must not say the username was left out.
    body = b"username=alice&password=correct\xff\xfehorse battery"
    response = client.post("/users", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_request",
        "error_description": "the body must be UTF-8",
    }
    assert _user_count(app) == 0


def test_a_json_field_given_twice_is_refused_and_writes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    # Kept last, the second name would sign up an account a filter reading the first never saw.
    body = f'{{"username": "alice", "username": "admin", "password": "{PASSWORD}"}}'
    response = client.post("/users", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_request",
        "error_description": "'username' must be given once",
    }
    assert _user_count(app) == 0


def test_closed_registration_answers_403(make_app: Any) -> None:
    app = make_app(registration_open=False)
    response = app.test_client().post("/users", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert response.is_json
    assert _user_count(app) == 0


def test_me_returns_the_token_owner(actions: Actions) -> None:
    tokens = actions.login("dave")
    response = actions.client.get("/users/me", headers=actions.bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.json["username"] == "dave"
    assert response.json["disabled"] is False


def test_me_without_a_token_is_a_bare_challenge(client: FlaskClient) -> None:
    response = client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == BARE_CHALLENGE
    assert response.is_json
