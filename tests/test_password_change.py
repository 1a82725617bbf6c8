"""POST /users/me/password: change one's password; every other login of the user ends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tokenserver import accounts
from tokenserver.extensions import db
from tokenserver.guard import FREE_ATTEMPTS
from tokenserver.models import User
from tokenserver.store import sessions, users
from tokenserver.store.tokens import issuing, lookups

from .conftest import PASSWORD, Actions
from .helpers import Flow, assert_oauth_error, refresh_grant, reset_queued_behind

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
    assert response.data == b"" and "Content-Type" not in response.headers
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


def test_a_password_login_checked_just_before_a_new_password_stores_nothing(
    app: Flask, actions: Actions, monkeypatch: pytest.MonkeyPatch, events: Any
) -> None:
    # The old password was right when checked; the operator's reset commits before the login
    # stores its tokens. Whoever held the old password must not keep a login.
    actions.user("alice")
    oauth_client = actions.oauth_client()
    store_issued = issuing.store_issued

    def reset_first(*args: Any, **kwargs: Any) -> Any:
        accounts.reset_password("alice", NEW)
        return store_issued(*args, **kwargs)

    monkeypatch.setattr(issuing, "store_issued", reset_first)
    assert_oauth_error(actions.token(oauth_client, "alice"), 400, "invalid_grant")
    with app.app_context():
        user = accounts.get("alice")
        assert lookups.signed_in_apps(user.id) == []
    # The password checked out, so the success is logged; the refusal follows it.
    assert [e["event"] for e in events() if e["event"].startswith("login.")] == [
        "login.success",
        "login.failure",
    ]
    assert events("login.failure")[0]["reason"] == "account_changed"
    assert events("login.failure")[0]["user_id"] == user.id
    assert events("token.issued") == []
    monkeypatch.undo()
    assert actions.token(oauth_client, "alice", NEW).status_code == 200


def test_a_sign_in_checked_just_before_a_new_password_starts_no_session(
    app: Flask, client: FlaskClient, actions: Actions, monkeypatch: pytest.MonkeyPatch, events: Any
) -> None:
    actions.user("alice")
    start = sessions.start

    def reset_first(*args: Any, **kwargs: Any) -> Any:
        accounts.reset_password("alice", NEW)
        return start(*args, **kwargs)

    monkeypatch.setattr(sessions, "start", reset_first)
    refused = Flow(app, client).login()
    assert refused.status_code == 400  # as for a wrong password
    assert client.get("/account").status_code == 303  # no session: off to /login
    assert [e.get("reason") for e in events("login.failure")] == ["account_changed"]
    assert events("session.started") == []
    monkeypatch.undo()
    assert Flow(app, client).login(password=NEW).status_code == 303
    assert client.get("/account").status_code == 200


def test_a_login_that_upgrades_an_old_hash_is_stored(make_app: Any) -> None:
    # The login rehashes with new parameters before it stores: the hash it checked is the new one.
    app = make_app()
    Actions(app, app.test_client()).user("alice")
    stronger = make_app(argon2_time_cost=2)
    actions = Actions(stronger, stronger.test_client())
    with stronger.app_context():
        before = db.session.scalars(select(User.password_hash)).one()
    assert actions.token(actions.oauth_client(), "alice").status_code == 200
    with stronger.app_context():
        assert db.session.scalars(select(User.password_hash)).one() != before


def test_a_login_upgrading_its_hash_never_writes_over_a_reset(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The login checked the old password and would store its hash in today's parameters; the
    # operator's reset commits first. The reset stands, and the login gets nothing.
    Actions(make_app(), make_app().test_client()).user("alice")
    stronger = make_app(argon2_time_cost=2)  # alice's hash is due for an upgrade
    actions = Actions(stronger, stronger.test_client())
    oauth_client = actions.oauth_client()
    upgrade = users.set_password_hash

    def reset_first(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("over") is not None and not reset_first.done:  # type: ignore[attr-defined]
            reset_first.done = True  # type: ignore[attr-defined]
            accounts.reset_password("alice", NEW)
        return upgrade(*args, **kwargs)

    reset_first.done = False  # type: ignore[attr-defined]
    monkeypatch.setattr(users, "set_password_hash", reset_first)
    assert_oauth_error(actions.token(oauth_client, "alice"), 400, "invalid_grant")
    monkeypatch.undo()
    assert_oauth_error(actions.token(oauth_client, "alice"), 400, "invalid_grant")
    assert actions.token(oauth_client, "alice", NEW).status_code == 200


def test_a_change_checked_before_a_reset_does_not_write_over_it(
    app: Flask, actions: Actions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone with the old password changes it; the operator's reset commits in between
    # their check and their write. The operator's password stands.
    session = actions.login("alice")
    replace_password = accounts._replace_password

    def reset_first(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("over") is not None:
            accounts.reset_password("alice", "the operator's new passphrase")
        return replace_password(*args, **kwargs)

    monkeypatch.setattr(accounts, "_replace_password", reset_first)
    changed = _change(
        actions.client, session["access_token"], PASSWORD, "the intruder's passphrase"
    )
    assert_oauth_error(changed, 400, "invalid_grant")
    monkeypatch.undo()
    oauth_client = session["client"]
    assert_oauth_error(
        actions.token(oauth_client, "alice", "the intruder's passphrase"), 400, "invalid_grant"
    )
    assert actions.token(oauth_client, "alice", "the operator's new passphrase").status_code == 200


def test_a_reset_waits_for_a_password_login_under_way_and_revokes_it(
    app: Flask, actions: Actions, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: the login has stored its family, not yet committed, when the reset starts.
    # The login holds the user's row, so the reset waits, then revokes what the login stored.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time")
    actions.user("alice")
    oauth_client = actions.oauth_client()
    stored, release = threading.Event(), threading.Event()
    issue = issuing._issue

    def held(*args: Any, **kwargs: Any) -> Any:
        outcome = issue(*args, **kwargs)
        stored.set()
        release.wait(30)
        return outcome

    monkeypatch.setattr(issuing, "_issue", held)
    answers: list[Any] = []
    login = threading.Thread(target=lambda: answers.append(actions.token(oauth_client, "alice")))
    login.start()
    assert stored.wait(30)

    resetting = reset_queued_behind(app, database_url, NEW)
    release.set()
    login.join()
    resetting.join()
    assert answers[0].status_code == 200  # it came first...
    with app.app_context():
        assert lookups.signed_in_apps(accounts.get("alice").id) == []  # ...and is revoked
