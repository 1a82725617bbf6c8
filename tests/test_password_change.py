"""POST /users/me/password: change one's password; every other login of the user ends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import time_machine
from flask import Flask
from flask.testing import FlaskClient

from tokenserver.guard import FREE_ATTEMPTS

from .conftest import PASSWORD, Actions
from .helpers import Flow, assert_oauth_error, refresh_grant

NEW = "a brand new pass phrase"


def _change(client: FlaskClient, access_token: str, current: str, new: str = NEW) -> Any:
    return client.post(
        "/users/me/password",
        json={"current_password": current, "new_password": new},
        headers=Actions.bearer(access_token),
    )


def test_changing_the_password_ends_every_other_login(actions: Actions) -> None:
    here = actions.login("alice")
    elsewhere = actions.token(here["client"]).json
    response = _change(actions.client, here["access_token"], PASSWORD)
    assert response.status_code == 204
    assert response.data == b""
    # The other login is over: its refresh token and its access token are dead.
    assert_oauth_error(
        refresh_grant(actions.client, here["client"], elsewhere["refresh_token"]),
        400,
        "invalid_grant",
    )
    me = actions.client.get("/users/me", headers=Actions.bearer(elsewhere["access_token"]))
    assert me.status_code == 401
    # This login goes on.
    assert refresh_grant(actions.client, here["client"], here["refresh_token"]).status_code == 200
    # The new password works; the old one does not.
    assert actions.token(here["client"], password=NEW).status_code == 200
    assert actions.token(here["client"], password=PASSWORD).status_code == 400


def test_another_users_logins_are_untouched(actions: Actions) -> None:
    alice = actions.login("alice")
    bob = actions.login("bob")
    assert _change(actions.client, alice["access_token"], PASSWORD).status_code == 204
    assert refresh_grant(actions.client, bob["client"], bob["refresh_token"]).status_code == 200


def test_a_wrong_current_password_is_invalid_grant_and_changes_nothing(
    actions: Actions,
) -> None:
    here = actions.login("alice")
    response = _change(actions.client, here["access_token"], "not the password")
    assert_oauth_error(response, 400, "invalid_grant")
    assert actions.token(here["client"]).status_code == 200


def test_wrong_current_passwords_count_toward_the_password_guard(actions: Actions) -> None:
    here = actions.login("alice")
    with time_machine.travel(datetime.now(UTC), tick=False):
        for _ in range(FREE_ATTEMPTS):
            assert _change(actions.client, here["access_token"], "wrong guess").status_code == 400
        throttled = _change(actions.client, here["access_token"], PASSWORD)
        assert throttled.status_code == 429
        assert "Retry-After" in throttled.headers
        # The guard is the account's: the token endpoint is throttled too.
        assert actions.token(here["client"]).status_code == 429


def test_a_weak_new_password_is_refused(actions: Actions) -> None:
    here = actions.login("alice")
    response = _change(actions.client, here["access_token"], PASSWORD, "Summer2024!")
    assert_oauth_error(response, 400, "invalid_request")
    assert "new_password" in response.json["error_description"]
    assert "weak_password" in response.json["error_description"]
    assert actions.token(here["client"]).status_code == 200


def test_missing_fields_and_bad_tokens_are_refused(actions: Actions) -> None:
    here = actions.login("alice")
    bearer = Actions.bearer(here["access_token"])
    missing = actions.client.post("/users/me/password", json={"new_password": NEW}, headers=bearer)
    assert_oauth_error(missing, 400, "invalid_request")
    assert "current_password" in missing.json["error_description"]
    anonymous = actions.client.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": NEW}
    )
    assert anonymous.status_code == 401


def test_a_client_token_may_not_change_any_password(actions: Actions) -> None:
    backend = actions.oauth_client("backend")
    token = actions.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=backend.auth
    ).json["access_token"]
    assert _change(actions.client, token, PASSWORD).status_code == 403


def test_changing_the_password_by_api_also_ends_browser_sessions(
    app: Flask, actions: Actions
) -> None:
    here = actions.login("alice")
    browser = Flow(app, app.test_client())
    assert browser.login().status_code == 303
    assert browser.client.get("/account").status_code == 200
    assert _change(actions.client, here["access_token"], PASSWORD).status_code == 204
    assert browser.client.get("/account").headers["Location"].startswith("/login")
