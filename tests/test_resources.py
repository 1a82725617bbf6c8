"""Resource indicators (RFC 8707): `resource` on every grant and at /oauth/authorize."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import jwt as pyjwt
import pytest
from flask.testing import FlaskCliRunner

from .conftest import PASSWORD, Actions, RegisteredClient
from .helpers import REDIRECT, Flow, pkce, query_of, verified

DEFAULT = "http://localhost:8000"  # the default audience: the issuer
PHOTOS = "https://photos.example/api"
MAIL = "https://mail.example/"
PRINT = "urn:example:print"  # any absolute URI, not only http(s)


@pytest.fixture
def registered(actions: Actions) -> RegisteredClient:
    actions.user("alice")
    return actions.oauth_client(audiences=(PHOTOS, MAIL, PRINT))


def _refresh(actions: Actions, app: RegisteredClient, token: str, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return actions.client.post("/oauth/token", data=data, auth=app.auth)


def _login_for_photos_and_mail(actions: Actions, app: RegisteredClient) -> Any:
    """A password grant with two `resource` parameters (RFC 8707 §2 allows several)."""
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    return actions.client.post(
        "/oauth/token", data={**data, "resource": [PHOTOS, MAIL]}, auth=app.auth
    )


def _client_credentials(actions: Actions, app: RegisteredClient, **extra: str) -> Any:
    data = {"grant_type": "client_credentials", **extra}
    return actions.client.post("/oauth/token", data=data, auth=app.auth)


def test_password_grant_aims_the_token_at_the_resource(
    actions: Actions, registered: RegisteredClient
) -> None:
    response = actions.token(registered, resource=PHOTOS)
    assert response.status_code == 200, response.json
    claims = verified(actions.client, response.json["access_token"], PHOTOS)
    assert claims["aud"] == PHOTOS and claims["username"] == "alice"
    with pytest.raises(pyjwt.InvalidAudienceError):
        verified(actions.client, response.json["access_token"], DEFAULT)


def test_client_credentials_grant_aims_the_token_at_the_resource(
    actions: Actions, registered: RegisteredClient
) -> None:
    response = _client_credentials(actions, registered, resource=PRINT)
    assert response.status_code == 200, response.json
    claims = verified(actions.client, response.json["access_token"], PRINT)
    assert claims["aud"] == PRINT and claims["sub"] == registered.client_id


def test_without_resource_the_token_is_for_the_default_audience(
    actions: Actions, registered: RegisteredClient
) -> None:
    password = actions.token(registered)
    machine = _client_credentials(actions, registered)
    for response in (password, machine):
        assert response.status_code == 200, response.json
        assert verified(actions.client, response.json["access_token"], DEFAULT)["aud"] == DEFAULT


def test_an_empty_resource_is_as_if_left_out(
    actions: Actions, registered: RegisteredClient
) -> None:
    # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    password = actions.token(registered, resource="")
    machine = _client_credentials(actions, registered, resource="")
    for response in (password, machine):
        assert response.status_code == 200, response.json
        assert verified(actions.client, response.json["access_token"], DEFAULT)["aud"] == DEFAULT
    # Beside a value, it names nothing more.
    data = {"grant_type": "client_credentials", "resource": ["", PRINT]}
    response = actions.client.post("/oauth/token", data=data, auth=registered.auth)
    assert response.status_code == 200, response.json
    assert verified(actions.client, response.json["access_token"], PRINT)["aud"] == PRINT


def test_several_resources_give_a_token_for_all_of_them(
    actions: Actions, registered: RegisteredClient
) -> None:
    response = _login_for_photos_and_mail(actions, registered)
    assert response.status_code == 200, response.json
    assert verified(actions.client, response.json["access_token"], MAIL)["aud"] == [PHOTOS, MAIL]


@pytest.mark.parametrize(
    "resource",
    [
        "https://elsewhere.example/api",  # not registered for this client
        "/api",  # relative
        "photos.example/api",  # no scheme
        PHOTOS + "#frag",  # a fragment (RFC 8707 §2)
    ],
)
@pytest.mark.parametrize("grant", ["password", "client_credentials"])
def test_an_unknown_or_malformed_resource_is_invalid_target(
    actions: Actions, registered: RegisteredClient, grant: str, resource: str
) -> None:
    if grant == "password":
        response = actions.token(registered, resource=resource)
    else:
        response = _client_credentials(actions, registered, resource=resource)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_target"
    assert response.json["error_description"]


def test_a_refresh_may_narrow_to_one_resource_of_the_login_never_widen(
    actions: Actions, registered: RegisteredClient
) -> None:
    login = _login_for_photos_and_mail(actions, registered).json
    wider = _refresh(actions, registered, login["refresh_token"], resource=PRINT)
    assert wider.status_code == 400 and wider.json["error"] == "invalid_target"
    # The refused request spent nothing: the refresh token still works, narrowed to one resource.
    photos = _refresh(actions, registered, login["refresh_token"], resource=PHOTOS)
    assert photos.status_code == 200, photos.json
    assert verified(actions.client, photos.json["access_token"], PHOTOS)["aud"] == PHOTOS
    # The next refresh may pick the login's other resource, or all of them again.
    mail = _refresh(actions, registered, photos.json["refresh_token"], resource=MAIL)
    assert verified(actions.client, mail.json["access_token"], MAIL)["aud"] == MAIL
    both = _refresh(actions, registered, mail.json["refresh_token"])
    assert verified(actions.client, both.json["access_token"], PHOTOS)["aud"] == [PHOTOS, MAIL]


def test_a_login_for_the_default_audience_cannot_be_refreshed_into_another(
    actions: Actions, registered: RegisteredClient
) -> None:
    login = actions.token(registered).json
    widened = _refresh(actions, registered, login["refresh_token"], resource=PHOTOS)
    assert widened.status_code == 400 and widened.json["error"] == "invalid_target"
    same = _refresh(actions, registered, login["refresh_token"])
    assert verified(actions.client, same.json["access_token"], DEFAULT)["aud"] == DEFAULT


def test_our_own_routes_refuse_a_token_aimed_at_another_resource_server(
    actions: Actions, registered: RegisteredClient
) -> None:
    foreign = actions.token(registered, resource=PHOTOS).json["access_token"]
    ours = actions.token(registered).json["access_token"]
    for path in ("/junk", "/users/me"):
        refused = actions.client.get(path, headers=actions.bearer(foreign))
        assert refused.status_code == 401, path
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
        assert actions.client.get(path, headers=actions.bearer(ours)).status_code == 200
    posted = actions.client.post("/junk", json={"name": "x"}, headers=actions.bearer(foreign))
    assert posted.status_code == 401


def test_introspection_returns_the_tokens_real_audience(
    actions: Actions, registered: RegisteredClient
) -> None:
    server = actions.oauth_client("photos-api", introspect=True)
    foreign = actions.token(registered, resource=PHOTOS).json
    ours = actions.token(registered).json
    for token, aud in ((foreign["access_token"], PHOTOS), (ours["access_token"], DEFAULT)):
        answer = actions.client.post("/oauth/introspect", data={"token": token}, auth=server.auth)
        assert answer.json["active"] is True and answer.json["aud"] == aud
    # A refresh token reports the resources of its login.
    for token, aud in ((foreign["refresh_token"], PHOTOS), (ours["refresh_token"], DEFAULT)):
        answer = actions.client.post("/oauth/introspect", data={"token": token}, auth=server.auth)
        assert answer.json["active"] is True and answer.json["aud"] == aud
    # Revoking works on a foreign-audience token too, and introspection then says inactive.
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": foreign["access_token"]}, auth=registered.auth
    )
    assert revoked.status_code == 200
    answer = actions.client.post(
        "/oauth/introspect", data={"token": foreign["access_token"]}, auth=server.auth
    )
    assert answer.json == {"active": False}


# --- the authorization code flow ------------------------------------------------------------


@pytest.fixture
def photo_app(flow: Flow) -> tuple[str, str | None]:
    registered = flow.register(first_party=True, audiences=(PHOTOS, MAIL))
    flow.login()
    return registered


def test_the_consent_page_names_the_resources_asked_for(flow: Flow) -> None:
    client_id, _secret = flow.register(audiences=(PHOTOS, MAIL))
    flow.login()
    _verifier, challenge = pkce()
    asked = flow.authorize(client_id, challenge, resource=PHOTOS)
    page = flow.client.get(asked.headers["Location"])
    assert f"Its access will work only at <code>{PHOTOS}</code>." in page.text
    assert MAIL not in page.text
    plain = flow.client.get(flow.authorize(client_id, challenge).headers["Location"])
    assert plain.status_code == 200 and "work only at" not in plain.text


def test_a_resource_asked_at_authorize_is_bound_into_the_code(
    flow: Flow, photo_app: tuple[str, str | None]
) -> None:
    client_id, secret = photo_app
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, resource=PHOTOS)
    # The exchange cannot widen what the code was issued for.
    wider = flow.exchange(client_id, secret, code, verifier, resource=MAIL)
    assert wider.status_code == 400 and wider.json["error"] == "invalid_target"
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, resource=PHOTOS)
    tokens = flow.exchange(client_id, secret, code, verifier)
    assert tokens.status_code == 200, tokens.json
    assert verified(flow.client, tokens.json["access_token"], PHOTOS)["aud"] == PHOTOS
    # Its refresh token stays bound to the code's resource.
    refreshed = flow.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.json["refresh_token"],
            "resource": MAIL,
        },
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_target"


def test_an_exchange_may_narrow_the_codes_resources(
    flow: Flow, photo_app: tuple[str, str | None]
) -> None:
    client_id, secret = photo_app
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "junk:read",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    resources = urlencode([("resource", PHOTOS), ("resource", MAIL)])
    response = flow.client.get(f"/oauth/authorize?{urlencode(query)}&{resources}")
    code = query_of(response.headers["Location"])["code"]
    tokens = flow.exchange(client_id, secret, code, verifier, resource=MAIL)
    assert tokens.status_code == 200, tokens.json
    assert verified(flow.client, tokens.json["access_token"], MAIL)["aud"] == MAIL


def test_a_code_without_resource_cannot_be_exchanged_for_one(
    flow: Flow, photo_app: tuple[str, str | None]
) -> None:
    client_id, secret = photo_app
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    widened = flow.exchange(client_id, secret, code, verifier, resource=PHOTOS)
    assert widened.status_code == 400 and widened.json["error"] == "invalid_target"


@pytest.mark.parametrize("resource", ["https://elsewhere.example/", "/relative", PHOTOS + "#f"])
def test_a_bad_resource_at_authorize_is_redirected_back_as_invalid_target(
    flow: Flow, photo_app: tuple[str, str | None], resource: str
) -> None:
    client_id, _secret = photo_app
    _verifier, challenge = pkce()
    response = flow.authorize(client_id, challenge, resource=resource)
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "invalid_target" and query["state"] == "st-1"
    assert "code" not in query


# --- the command line -----------------------------------------------------------------------


def test_cli_registers_and_lists_audiences_and_auth_method(runner: FlaskCliRunner) -> None:
    made = runner.invoke(
        args=["clients", "create", "api", "--audience", PHOTOS, "--audience", MAIL, "--json"]
    )
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert created["audiences"] == [PHOTOS, MAIL]
    assert created["token_endpoint_auth_method"] == "client_secret_basic"
    public = json.loads(
        runner.invoke(args=["clients", "create", "app", "--public", "--json"]).output
    )
    listed = json.loads(runner.invoke(args=["clients", "list", "--json"]).output)
    by_id = {c["client_id"]: c for c in listed}
    assert by_id[created["client_id"]]["audiences"] == [PHOTOS, MAIL]
    assert by_id[public["client_id"]]["audiences"] == []
    assert by_id[public["client_id"]]["token_endpoint_auth_method"] == "none"
    text = runner.invoke(args=["clients", "list"]).output
    line = next(row for row in text.splitlines() if row.startswith(created["client_id"]))
    assert f"{PHOTOS} {MAIL}" in line and "client_secret_basic" in line


@pytest.mark.parametrize("audience", ["/relative", "photos.example", PHOTOS + "#frag"])
def test_cli_refuses_a_malformed_audience(runner: FlaskCliRunner, audience: str) -> None:
    made = runner.invoke(args=["clients", "create", "api", "--audience", audience])
    assert made.exit_code != 0
    assert "absolute URI without a fragment" in made.output
    assert "api" not in runner.invoke(args=["clients", "list"]).output
