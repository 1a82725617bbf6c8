"""Token records over a login's life: its absolute end, the reuse grace, revoking logins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tokenserver.extensions import db
from tokenserver.models import TokenFamily, User
from tokenserver.store.tokens.revoking import revoke_logins

from .conftest import LiveServer, RegisteredClient
from .helpers import (
    Flow,
    assert_oauth_error,
    claims_of,
    password_login,
    pkce,
    race_refreshes,
    refresh_grant,
    works,
)

DAY = 86400
INACTIVE = {"active": False}


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(time.time(), tick=False) as traveller:
        yield traveller


def setup(make_app: Any, **settings: Any) -> tuple[Flask, FlaskClient, RegisteredClient]:
    from .conftest import Actions

    app = make_app(**settings)
    actions = Actions(app, app.test_client())
    actions.user("alice")
    return app, actions.client, actions.oauth_client("app", introspect=True)


def login(client: FlaskClient, oauth_client: RegisteredClient) -> dict[str, Any]:
    from .conftest import PASSWORD

    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    response = client.post("/oauth/token", data=data, auth=oauth_client.auth)
    assert response.status_code == 200, response.json
    return response.json  # type: ignore[no-any-return]


def introspect(client: FlaskClient, oauth_client: RegisteredClient, token: str) -> Any:
    return client.post("/oauth/introspect", data={"token": token}, auth=oauth_client.auth).json


# --- TOKENSERVER_SESSION_MAX_AGE ---------------------------------------------------------------


def test_refreshing_never_carries_a_login_past_its_session_max_age(
    make_app: Any, clock: Any
) -> None:
    _app, client, app_client = setup(make_app, session_max_age=10 * DAY, refresh_token_ttl=3 * DAY)
    started = time.time()
    tokens = login(client, app_client)
    for _day in range(4):  # refreshed every other day: the sliding expiry alone would never end
        clock.shift(2 * DAY)
        refreshed = refresh_grant(client, app_client, tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.json
        tokens = refreshed.json
        exp = introspect(client, app_client, tokens["refresh_token"])["exp"]
        assert exp <= started + 10 * DAY  # never past the login's end
    assert introspect(client, app_client, tokens["refresh_token"])["exp"] == int(started) + 10 * DAY
    clock.shift(2 * DAY)  # day 10: the login is over, though the last token is 2 days old
    assert introspect(client, app_client, tokens["refresh_token"]) == INACTIVE
    assert_oauth_error(
        refresh_grant(client, app_client, tokens["refresh_token"]), 400, "invalid_grant"
    )


def test_a_lowered_session_max_age_ends_logins_already_running(make_app: Any, clock: Any) -> None:
    _app, client, app_client = setup(make_app)
    tokens = login(client, app_client)
    clock.shift(2 * DAY)
    shorter = make_app(session_max_age=DAY)
    strict = shorter.test_client()
    assert introspect(strict, app_client, tokens["refresh_token"]) == INACTIVE
    assert_oauth_error(
        refresh_grant(strict, app_client, tokens["refresh_token"]), 400, "invalid_grant"
    )


def test_session_max_age_is_read_from_the_environment() -> None:
    from tokenserver.config import ConfigError, Settings

    assert Settings.from_env({}).session_max_age == 2_592_000
    assert Settings.from_env({"TOKENSERVER_SESSION_MAX_AGE": "3600"}).session_max_age == 3600
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="TOKENSERVER_SESSION_MAX_AGE"):
            Settings.from_env({"TOKENSERVER_SESSION_MAX_AGE": bad})
        with pytest.raises(ConfigError, match="TOKENSERVER_REFRESH_REUSE_GRACE"):
            Settings.from_env({"TOKENSERVER_REFRESH_REUSE_GRACE": bad if bad != "0" else "x"})


# --- TOKENSERVER_REFRESH_REUSE_GRACE -----------------------------------------------------------


def test_reuse_within_the_grace_gets_fresh_tokens_in_the_same_login(
    make_app: Any, clock: Any
) -> None:
    _app, client, app_client = setup(make_app, refresh_reuse_grace=30)
    first = login(client, app_client)
    winner = refresh_grant(client, app_client, first["refresh_token"]).json
    clock.shift(29)
    loser = refresh_grant(client, app_client, first["refresh_token"])
    assert loser.status_code == 200, loser.json
    assert loser.json["refresh_token"] not in (winner["refresh_token"], first["refresh_token"])
    for tokens in (winner, loser.json):
        assert works(client, tokens["access_token"])
        assert introspect(client, app_client, tokens["refresh_token"])["active"] is True
    assert claims_of(loser.json["access_token"])["sub"] == claims_of(winner["access_token"])["sub"]


def test_reuse_after_the_grace_revokes_the_login(make_app: Any, clock: Any) -> None:
    _app, client, app_client = setup(make_app, refresh_reuse_grace=30)
    first = login(client, app_client)
    winner = refresh_grant(client, app_client, first["refresh_token"]).json
    clock.shift(30)
    assert_oauth_error(
        refresh_grant(client, app_client, first["refresh_token"]), 400, "invalid_grant"
    )
    assert not works(client, winner["access_token"])
    assert_oauth_error(
        refresh_grant(client, app_client, winner["refresh_token"]), 400, "invalid_grant"
    )


def test_the_grace_is_for_the_same_client_and_a_live_login_only(make_app: Any, clock: Any) -> None:
    from .conftest import Actions

    app, client, app_client = setup(make_app, refresh_reuse_grace=30)
    other = Actions(app, client).oauth_client("other")
    first = login(client, app_client)
    winner = refresh_grant(client, app_client, first["refresh_token"]).json
    # Another client presenting it learns nothing and revokes nothing.
    assert_oauth_error(refresh_grant(client, other, first["refresh_token"]), 400, "invalid_grant")
    assert works(client, winner["access_token"])
    # A login revoked meanwhile stays revoked: the grace does not revive it.
    client.post("/oauth/revoke", data={"token": winner["refresh_token"]}, auth=app_client.auth)
    assert_oauth_error(
        refresh_grant(client, app_client, first["refresh_token"]), 400, "invalid_grant"
    )


def test_without_a_grace_any_reuse_revokes_the_login(make_app: Any) -> None:
    _app, client, app_client = setup(make_app)
    first = login(client, app_client)
    winner = refresh_grant(client, app_client, first["refresh_token"]).json
    assert_oauth_error(
        refresh_grant(client, app_client, first["refresh_token"]), 400, "invalid_grant"
    )
    assert not works(client, winner["access_token"])


@pytest.fixture
def graceful(live_server_factory: Any, app: Flask) -> LiveServer:
    """Gunicorn with a reuse grace of a minute (and `app` to clean the database after)."""
    server: LiveServer = live_server_factory(TOKENSERVER_REFRESH_REUSE_GRACE="60")
    return server


def test_concurrent_refreshes_within_the_grace_all_succeed_in_one_login(
    graceful: LiveServer, actions: Any
) -> None:
    actions.user("alice")
    app_client = actions.oauth_client("app")
    contenders = 8
    refresh_token = password_login(graceful, app_client).json()["refresh_token"]
    responses = race_refreshes(graceful, app_client, refresh_token, contenders)
    assert [r.status_code for r in responses] == [200] * contenders, [r.text for r in responses]
    issued = [r.json() for r in responses]
    assert len({tokens["refresh_token"] for tokens in issued}) == contenders
    families = {claims_of(tokens["access_token"])["sub"] for tokens in issued}
    assert len(families) == 1
    with actions.app.app_context():
        live = db.session.scalars(select(TokenFamily).where(TokenFamily.revoked_at.is_(None))).all()
    assert len(live) == 1  # one login, still alive
    for tokens in issued:
        me = actions.client.get(
            "/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.status_code == 200


# --- revoke_logins --------------------------------------------------------------------------------


def test_revoke_logins_ends_every_login_but_the_one_kept(make_app: Any) -> None:
    app, client, app_client = setup(make_app)
    logins = [login(client, app_client) for _ in range(3)]
    kept_family = _family_of(app, logins[0]["access_token"])
    with app.app_context():
        user_id = int(claims_of(logins[0]["access_token"])["sub"])
        assert revoke_logins(user_id, keep_family=kept_family) == 2
        assert revoke_logins(user_id, keep_family=kept_family) == 0  # already revoked
    assert works(client, logins[0]["access_token"])
    assert refresh_grant(client, app_client, logins[0]["refresh_token"]).status_code == 200
    for tokens in logins[1:]:
        assert not works(client, tokens["access_token"])
        assert_oauth_error(
            refresh_grant(client, app_client, tokens["refresh_token"]), 400, "invalid_grant"
        )
    with app.app_context():
        assert revoke_logins(user_id) == 1


def test_a_disabled_users_logins_stay_dead_when_enabled_again(make_app: Any) -> None:
    app, client, app_client = setup(make_app)
    tokens = login(client, app_client)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    assert runner.invoke(args=["users", "enable", "alice"]).exit_code == 0
    assert not works(client, tokens["access_token"])
    assert introspect(client, app_client, tokens["access_token"]) == INACTIVE
    assert introspect(client, app_client, tokens["refresh_token"]) == INACTIVE
    assert_oauth_error(
        refresh_grant(client, app_client, tokens["refresh_token"]), 400, "invalid_grant"
    )
    assert works(client, login(client, app_client)["access_token"])  # a new sign-in works


@pytest.mark.parametrize("check", ["bearer", "introspection", "browser session", "code"])
def test_a_disabled_user_is_refused_by_each_check_on_its_own(flow: Flow, check: str) -> None:
    # `users disable` also revokes her logins and ends her sessions, so these checks never
    # stand alone there: here only her `disabled` flag is set, and each must hold by itself.
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    issued = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)  # not yet exchanged
    with flow.app.app_context():
        db.session.execute(update(User).where(User.username == "alice").values(disabled=True))
        db.session.commit()
    if check == "bearer":
        assert not works(flow.client, issued["access_token"])
    elif check == "introspection":
        token = {"token": issued["refresh_token"]}
        introspected = flow.client.post("/oauth/introspect", data=token, auth=(client_id, secret))
        assert introspected.json == INACTIVE
    elif check == "browser session":
        assert flow.client.get("/account").headers["Location"].startswith("/login")
    else:
        exchanged = flow.exchange(client_id, secret, code, verifier)
        assert_oauth_error(exchanged, 400, "invalid_grant")


def test_a_login_racing_a_disable_is_refused_rather_than_kept(make_app: Any) -> None:
    # The password was checked while the user was enabled; the disable lands before the
    # tokens are stored. The family insert sees the disabled flag and stores nothing.
    from tokenserver.models import Subject, User
    from tokenserver.oauth.records import record_issued

    app, client, app_client = setup(make_app)
    tokens = login(client, app_client)
    claims = claims_of(tokens["access_token"]) | {"jti": "racing-login"}
    with app.test_request_context():
        user = db.session.scalars(select(User)).one()
        subject = Subject(user.id, user.username, False, user.created_at)
        user.disabled = True
        db.session.commit()
        from authlib.oauth2.rfc6749.errors import InvalidGrantError

        from tokenserver.oauth.server import current_server

        registered = current_server().clients.get(app_client.client_id)
        with pytest.raises(InvalidGrantError):
            record_issued(
                {"access_token": tokens["access_token"], "refresh_token": "x" * 43},
                claims,
                registered,
                subject,
                3600,
            )
    with app.app_context():
        assert len(db.session.scalars(select(TokenFamily)).all()) == 1  # the first login only


def _family_of(app: Flask, access_token: str) -> str:
    from tokenserver.models import TokenRecord

    with app.app_context():
        family: str = db.session.scalars(
            select(TokenRecord.family_id).where(TokenRecord.jti == claims_of(access_token)["jti"])
        ).one()
    return family
