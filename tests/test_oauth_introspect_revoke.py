"""POST /oauth/introspect (RFC 7662) and POST /oauth/revoke (RFC 7009)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tokenserver.digests import digest
from tokenserver.extensions import db
from tokenserver.models import TokenFamily

from .conftest import Actions, RegisteredClient
from .helpers import assert_oauth_error, claims_of

INACTIVE = {"active": False}
ACTIVE_FIELDS = {
    "active",
    "scope",
    "client_id",
    "username",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "jti",
    "token_type",
}


@pytest.fixture
def login(actions: Actions) -> dict[str, Any]:
    """Alice's tokens from her app (the app is under "client")."""
    return actions.login("alice")


def introspect(
    client: FlaskClient,
    caller: RegisteredClient,
    token: str,
    path: str = "/oauth/introspect",
    **extra: str,
) -> Any:
    """Introspect `token`, authenticating as `caller` with HTTP Basic."""
    return client.post(path, data={"token": token, **extra}, auth=caller.auth)


def revoke(client: FlaskClient, caller: RegisteredClient, token: str, **extra: str) -> Any:
    """Revoke `token`, authenticating as `caller` (Basic, or `none` for public clients)."""
    if caller.secret is None:
        return client.post(
            "/oauth/revoke", data={"token": token, "client_id": caller.client_id, **extra}
        )
    return client.post("/oauth/revoke", data={"token": token, **extra}, auth=caller.auth)


def refresh(client: FlaskClient, caller: RegisteredClient, token: str) -> Any:
    """A refresh_token grant."""
    data = {"grant_type": "refresh_token", "refresh_token": token}
    return client.post("/oauth/token", data=data, auth=caller.auth)


def works(client: FlaskClient, access_token: str) -> bool:
    """Whether the bearer check accepts the token."""
    return client.get("/users/me", headers=Actions.bearer(access_token)).status_code == 200


# --- introspection ------------------------------------------------------------------------


def test_active_access_token_reports_every_field(
    client: FlaskClient, login: dict[str, Any]
) -> None:
    claims = claims_of(login["access_token"])
    for path in ("/oauth/introspect", "/introspect"):
        response = introspect(client, login["client"], login["access_token"], path)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = response.json
        assert set(body) == ACTIVE_FIELDS
        assert body["active"] is True
        assert body["token_type"] == "Bearer"
        assert body["username"] == "alice"
        for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti"):
            assert body[name] == claims[name], name


def test_active_refresh_token_is_reported_too(client: FlaskClient, login: dict[str, Any]) -> None:
    with time_machine.travel(time.time(), tick=False):
        body = introspect(client, login["client"], login["refresh_token"]).json
        now = int(time.time())
    assert set(body) == ACTIVE_FIELDS
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    # An id for the opaque token, stable across looks, that gives away neither it nor its digest.
    again = introspect(client, login["client"], login["refresh_token"]).json
    assert again["jti"] == body["jti"] and len(body["jti"]) == 32
    assert body["jti"] not in (login["refresh_token"], digest(login["refresh_token"]))
    assert body["jti"] not in digest(login["refresh_token"])
    rotated = refresh(client, login["client"], login["refresh_token"]).json["refresh_token"]
    assert introspect(client, login["client"], rotated).json["jti"] != body["jti"]
    assert body["client_id"] == login["client"].client_id
    assert body["username"] == "alice"
    assert body["scope"] == "junk:read junk:write"
    assert body["exp"] - body["iat"] == 2_592_000
    assert body["iat"] <= now


def test_refresh_token_expiry_reported_is_no_later_than_its_login_ends(
    make_app: Any, login: dict[str, Any]
) -> None:
    # A lowered TOKENSERVER_SESSION_MAX_AGE ends longer logins at once: the exp a resource
    # server reads (and may keep the answer until, RFC 7662 §4) must not outlast that end.
    shorter = make_app(session_max_age=3600).test_client()
    body = introspect(shorter, login["client"], login["refresh_token"]).json
    assert body["active"] is True
    assert body["iat"] < body["exp"] <= body["iat"] + 3600


def test_client_credentials_token_reports_the_client_as_subject(
    client: FlaskClient, actions: Actions, resource_server: RegisteredClient
) -> None:
    service = actions.oauth_client("service", scope="junk:read")
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=service.auth
    ).json["access_token"]
    body = introspect(client, resource_server, token).json
    assert body["active"] is True
    assert body["sub"] == body["client_id"] == service.client_id
    assert "username" not in body
    assert body["scope"] == "junk:read"


def test_wrong_type_hint_does_not_hide_a_token(client: FlaskClient, login: dict[str, Any]) -> None:
    caller = login["client"]
    assert introspect(client, caller, login["access_token"], token_type_hint="refresh_token").json[
        "active"
    ]
    assert introspect(client, caller, login["refresh_token"], token_type_hint="access_token").json[
        "active"
    ]


def test_resource_server_may_introspect_any_token(
    client: FlaskClient, login: dict[str, Any], resource_server: RegisteredClient
) -> None:
    for token in (login["access_token"], login["refresh_token"]):
        assert introspect(client, resource_server, token).json["active"] is True


def test_other_clients_see_only_their_own_tokens(
    client: FlaskClient, actions: Actions, login: dict[str, Any]
) -> None:
    other = actions.oauth_client("other")
    for token in (login["access_token"], login["refresh_token"]):
        assert introspect(client, other, token).json == INACTIVE
    # ...and asking did not harm the token.
    assert introspect(client, login["client"], login["access_token"]).json["active"] is True


def test_unknown_or_malformed_token_is_exactly_inactive(
    client: FlaskClient, resource_server: RegisteredClient
) -> None:
    for token in ("", "unknown", "a.b.c", "x" * 5000, "\u00fc" * 10):
        response = introspect(client, resource_server, token)
        assert response.status_code == 200
        assert response.json == INACTIVE


def test_expired_tokens_are_exactly_inactive(
    make_app: Any,
) -> None:
    app = make_app(refresh_token_ttl=3600)
    actions = Actions(app, app.test_client())
    rs = actions.oauth_client("api", introspect=True)
    with time_machine.travel(time.time(), tick=False) as clock:
        login = actions.login("alice")
        clock.shift(900)
        assert introspect(actions.client, rs, login["access_token"]).json == INACTIVE
        assert introspect(actions.client, rs, login["refresh_token"]).json["active"] is True
        clock.shift(2700)
        assert introspect(actions.client, rs, login["refresh_token"]).json == INACTIVE


def test_spent_refresh_token_is_exactly_inactive(
    client: FlaskClient, login: dict[str, Any], resource_server: RegisteredClient
) -> None:
    rotated = refresh(client, login["client"], login["refresh_token"]).json
    assert introspect(client, resource_server, login["refresh_token"]).json == INACTIVE
    assert introspect(client, resource_server, rotated["refresh_token"]).json["active"] is True


def test_disabled_users_tokens_are_exactly_inactive_and_stay_so_when_enabled(
    client: FlaskClient, runner: Any, login: dict[str, Any], resource_server: RegisteredClient
) -> None:
    runner.invoke(args=["users", "disable", "alice"])
    for token in (login["access_token"], login["refresh_token"]):
        assert introspect(client, resource_server, token).json == INACTIVE
    me = client.get("/users/me", headers=Actions.bearer(login["access_token"]))
    assert me.status_code == 401
    assert me.json["error"] == "invalid_token"
    runner.invoke(args=["users", "enable", "alice"])
    for token in (login["access_token"], login["refresh_token"]):
        assert introspect(client, resource_server, token).json == INACTIVE
    me = client.get("/users/me", headers=Actions.bearer(login["access_token"]))
    assert me.status_code == 401


def test_introspection_needs_client_authentication(
    client: FlaskClient, actions: Actions, login: dict[str, Any]
) -> None:
    token = login["access_token"]
    anonymous = client.post("/oauth/introspect", data={"token": token})
    assert_oauth_error(anonymous, 401, "invalid_client")
    wrong = introspect(client, RegisteredClient(login["client"].client_id, "wrong"), token)
    assert_oauth_error(wrong, 401, "invalid_client")
    public = actions.oauth_client("spa", public=True)
    as_public = client.post(
        "/oauth/introspect", data={"token": token, "client_id": public.client_id}
    )
    assert_oauth_error(as_public, 401, "invalid_client")


def test_introspection_accepts_client_secret_post(
    client: FlaskClient, login: dict[str, Any]
) -> None:
    caller = login["client"]
    response = client.post(
        "/oauth/introspect",
        data={
            "token": login["access_token"],
            "client_id": caller.client_id,
            "client_secret": caller.secret,
        },
    )
    assert response.json["active"] is True


def test_introspection_without_token_is_invalid_request(
    client: FlaskClient, resource_server: RegisteredClient
) -> None:
    response = client.post("/oauth/introspect", data={}, auth=resource_server.auth)
    assert_oauth_error(response, 400, "invalid_request")


def test_unknown_type_hint_is_ignored(client: FlaskClient, login: dict[str, Any]) -> None:
    # RFC 7662 §2.1 / RFC 7009 §2.1: the server may ignore the hint; it must not fail on it.
    caller = login["client"]
    found = introspect(client, caller, login["access_token"], token_type_hint="id_token")
    assert found.json["active"] is True
    assert (
        revoke(client, caller, login["refresh_token"], token_type_hint="id_token").status_code
        == 200
    )
    assert introspect(client, caller, login["refresh_token"]).json == INACTIVE


# --- revocation ---------------------------------------------------------------------------


def test_revoking_an_access_token_kills_just_that_token(
    client: FlaskClient, login: dict[str, Any], resource_server: RegisteredClient
) -> None:
    response = revoke(client, login["client"], login["access_token"])
    assert response.status_code == 200
    assert not works(client, login["access_token"])
    assert introspect(client, resource_server, login["access_token"]).json == INACTIVE
    # The login goes on: its refresh token still works.
    rotated = refresh(client, login["client"], login["refresh_token"])
    assert rotated.status_code == 200
    assert works(client, rotated.json["access_token"])


def test_revoking_a_refresh_token_kills_its_family(
    client: FlaskClient, login: dict[str, Any], resource_server: RegisteredClient
) -> None:
    app_client = login["client"]
    rotated = refresh(client, app_client, login["refresh_token"]).json
    assert revoke(client, app_client, rotated["refresh_token"]).status_code == 200
    for access in (login["access_token"], rotated["access_token"]):
        assert not works(client, access)
        assert introspect(client, resource_server, access).json == INACTIVE
    assert introspect(client, resource_server, rotated["refresh_token"]).json == INACTIVE
    assert_oauth_error(refresh(client, app_client, rotated["refresh_token"]), 400, "invalid_grant")


def test_revoking_leaves_other_logins_alone(client: FlaskClient, actions: Actions) -> None:
    first = actions.login("alice")
    second = actions.token(first["client"]).json
    revoke(client, first["client"], first["refresh_token"])
    assert works(client, second["access_token"])
    assert refresh(client, first["client"], second["refresh_token"]).status_code == 200


def test_unknown_token_revocation_is_200(client: FlaskClient, login: dict[str, Any]) -> None:
    for token in ("unknown", "a.b.c", "", "x" * 5000):
        response = revoke(client, login["client"], token)
        assert response.status_code == 200
    assert works(client, login["access_token"])


def test_another_clients_token_is_not_revoked(
    client: FlaskClient, actions: Actions, login: dict[str, Any]
) -> None:
    other = actions.oauth_client("other")
    for token in (login["access_token"], login["refresh_token"]):
        assert revoke(client, other, token).status_code == 200
    assert works(client, login["access_token"])
    assert refresh(client, login["client"], login["refresh_token"]).status_code == 200


def test_public_client_revokes_its_refresh_token_with_none(
    app: Flask, client: FlaskClient, actions: Actions
) -> None:
    actions.user("alice")
    spa = actions.oauth_client("spa", public=True)
    tokens = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "correct horse battery staple",
            "client_id": spa.client_id,
        },
    ).json
    assert revoke(client, spa, tokens["refresh_token"]).status_code == 200
    assert not works(client, tokens["access_token"])
    with app.app_context():
        assert db.session.scalars(select(TokenFamily.revoked_at)).one() is not None


def test_revoking_a_client_credentials_token(
    client: FlaskClient, actions: Actions, resource_server: RegisteredClient
) -> None:
    service = actions.oauth_client("service")
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=service.auth
    ).json["access_token"]
    assert revoke(client, service, token).status_code == 200
    assert introspect(client, resource_server, token).json == INACTIVE


def test_revocation_needs_client_authentication(client: FlaskClient, login: dict[str, Any]) -> None:
    anonymous = client.post("/oauth/revoke", data={"token": login["refresh_token"]})
    assert_oauth_error(anonymous, 401, "invalid_client")
    forged = RegisteredClient(login["client"].client_id, "wrong")
    assert_oauth_error(revoke(client, forged, login["refresh_token"]), 401, "invalid_client")
    assert refresh(client, login["client"], login["refresh_token"]).status_code == 200


def test_revocation_without_token_is_invalid_request(
    client: FlaskClient, login: dict[str, Any]
) -> None:
    response = client.post("/oauth/revoke", data={}, auth=login["client"].auth)
    assert_oauth_error(response, 400, "invalid_request")
