"""Dynamic client registration (RFC 7591) and its management (RFC 7592)."""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import time_machine
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from sqlalchemy import func, select

from tokenserver.extensions import db
from tokenserver.models import Client, InitialAccessToken, TokenFamily
from tokenserver.store import sessions
from tokenserver.store.tokens import issuing

from .conftest import Actions, LiveServer
from .helpers import REDIRECT, Flow, claims_of, pkce, query_of, run_behind, works

ISSUER = "http://localhost:8000"
TOKEN_LINE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def initial_token(runner: FlaskCliRunner, *args: str) -> str:
    """A fresh initial access token from the CLI."""
    result = runner.invoke(args=["clients", "registration-token", *args])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert TOKEN_LINE.match(token), result.stdout
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(
    client: FlaskClient, token: str, metadata: dict[str, Any] | None = None, **more: Any
) -> Any:
    return client.post("/oauth/register", json={**(metadata or {}), **more}, headers=bearer(token))


def client_count(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(Client)) or 0)


# Nested past Python's recursion limit, which its parser would meet with a RecursionError.
_DEEP = b"[" * 30_000 + b"]" * 30_000

WEB_APP: dict[str, Any] = {
    "client_name": "Photo App",
    "redirect_uris": [REDIRECT],
    "grant_types": ["authorization_code", "refresh_token"],
    "token_endpoint_auth_method": "none",
    "scope": "openid profile junk:read",
}


def test_registration_returns_the_client_as_registered_with_its_credentials(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    response = register(
        client,
        initial_token(runner),
        client_name="Sync service",
        grant_types=["client_credentials"],
        scope="junk:read",
        logo_uri="https://example.com/logo.png",  # not registered here: ignored (RFC 7591 §2)
        made_up_field=42,
    )
    assert response.status_code == 201, response.json
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    client_id = body["client_id"]
    assert body["client_name"] == "Sync service"
    assert body["grant_types"] == ["client_credentials"]
    assert body["response_types"] == []
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["scope"] == "junk:read"
    assert body["client_secret"] and body["client_secret_expires_at"] == 0
    assert abs(body["client_id_issued_at"] - datetime.now(UTC).timestamp()) < 60
    assert body["registration_client_uri"] == f"{ISSUER}/oauth/register/{client_id}"
    assert body["registration_access_token"]
    assert "logo_uri" not in body and "made_up_field" not in body
    # The secret works at the token endpoint.
    token = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, body["client_secret"]),
    )
    assert token.status_code == 200 and claims_of(token.json["access_token"])["sub"] == client_id


def test_registration_without_a_token_is_refused_with_a_bare_challenge(
    app: Flask, client: FlaskClient
) -> None:
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "}):
        response = client.post("/oauth/register", json=WEB_APP, headers=headers)
        assert response.status_code == 401
        assert response.json["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokenserver"'
    assert client_count(app) == 0


def test_registration_with_a_wrong_expired_or_spent_token_is_invalid_token(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    now = datetime.now(UTC)
    with time_machine.travel(now, tick=False):
        expiring = initial_token(runner, "--expires-in", "60")
    spent = initial_token(runner)
    assert register(client, spent, **WEB_APP).status_code == 201
    before = client_count(app)
    with time_machine.travel(now + timedelta(seconds=61), tick=False):
        attempts = [expiring, spent, "not-a-token", spent + "x", "\x00" * 10]
        for token in attempts:
            response = register(client, token, **WEB_APP)
            assert response.status_code == 401, token
            assert response.json["error"] == "invalid_token"
            assert response.headers["WWW-Authenticate"].startswith(
                'Bearer realm="tokenserver", error="invalid_token"'
            )
    assert client_count(app) == before


def test_an_initial_access_token_registers_exactly_one_client(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    token = initial_token(runner)
    first = register(client, token, **WEB_APP)
    second = register(client, token, **WEB_APP)
    assert first.status_code == 201
    assert second.status_code == 401 and second.json["error"] == "invalid_token"
    assert client_count(app) == 1


@pytest.mark.parametrize(
    "metadata, error, field",
    [
        ({"redirect_uris": ["http://app.example.com/cb"]}, "invalid_redirect_uri", "redirect URI"),
        ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "invalid_redirect_uri", "frag"),
        ({"redirect_uris": ["com.example.app:/cb"]}, "invalid_redirect_uri", "redirect URI"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri", "redirect URI"),
        # Unparseable, or a NUL that PostgreSQL cannot store: refused, never a 500.
        (
            {"redirect_uris": ["https://[app.example.com/cb"]},
            "invalid_redirect_uri",
            "redirect URI",
        ),
        ({"redirect_uris": ["https://app.example.com:99999/cb"]}, "invalid_redirect_uri", "port"),
        ({"redirect_uris": ["https://app.example.com/c\x00b"]}, "invalid_redirect_uri", "control"),
        *(
            ({"redirect_uris": [uri]}, "invalid_redirect_uri", "user name")
            for uri in (
                "https://app.example.com@evil.example/cb",  # the browser goes to evil.example
                "https://user:pass@app.example.com/cb",
                "https://@app.example.com/cb",
                "http://127.0.0.1:80@evil.example/cb",
            )
        ),
        (
            {"redirect_uris": "https://app.example.com/cb"},
            "invalid_client_metadata",
            "redirect_uris",
        ),
        ({"redirect_uris": []}, "invalid_client_metadata", "redirect_uris"),
        ({"grant_types": ["password"]}, "invalid_client_metadata", "grant_types"),
        (
            {"grant_types": ["password", "refresh_token"], "response_types": []},
            "invalid_client_metadata",
            "RFC 9700",
        ),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata", "grant_types"),
        (
            {"grant_types": ["urn:ietf:params:oauth:grant-type:token-exchange"]},
            "invalid_client_metadata",
            "an administrator registers",
        ),
        ({"grant_types": []}, "invalid_client_metadata", "grant_types"),
        (
            {"grant_types": ["refresh_token"], "response_types": []},
            "invalid_client_metadata",
            "grant_types",
        ),
        (
            {"grant_types": ["client_credentials"], "response_types": []},
            "invalid_client_metadata",
            "token_endpoint_auth_method none",
        ),
        ({"response_types": ["token"]}, "invalid_client_metadata", "response_types"),
        ({"response_types": []}, "invalid_client_metadata", "response_types"),
        (
            {"token_endpoint_auth_method": "client_secret_jwt"},
            "invalid_client_metadata",
            "token_endpoint_auth_method",
        ),
        (
            {"token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
            "token_endpoint_auth_method",
        ),
        ({"jwks_uri": "https://app.example.com/jwks"}, "invalid_client_metadata", "jwks_uri"),
        ({"scope": "junk:admin"}, "invalid_client_metadata", "scope"),
        ({"scope": 7}, "invalid_client_metadata", "scope"),
        ({"client_name": "x" * 201}, "invalid_client_metadata", "client_name"),
        ({"client_name": "bad\nname"}, "invalid_client_metadata", "client_name"),
        ({"client_name": "Photo \u202eppA"}, "invalid_client_metadata", "client_name"),
        # Nothing to see: the consent page would ask about an app without a name.
        ({"client_name": "   "}, "invalid_client_metadata", "client_name"),
        ({"client_name": "\u200b\u200b"}, "invalid_client_metadata", "client_name"),
        ({"client_name": "\u3164"}, "invalid_client_metadata", "client_name"),
        ({"client_name": "\u00ad\u0301"}, "invalid_client_metadata", "client_name"),
        # A line separator splits a row of `clients list` as a newline does.
        ({"client_name": "Photo\u2028App"}, "invalid_client_metadata", "client_name"),
        # Half a surrogate pair: JSON may spell one, but no database text can hold it.
        ({"client_name": "Photo \ud800App"}, "invalid_client_metadata", "client_name"),
        # RFC 9449 §5.2: a JSON boolean, nothing that merely reads as one.
        ({"dpop_bound_access_tokens": "true"}, "invalid_client_metadata", "dpop_bound"),
        ({"dpop_bound_access_tokens": 1}, "invalid_client_metadata", "dpop_bound"),
        ({"dpop_bound_access_tokens": None}, "invalid_client_metadata", "dpop_bound"),
        (
            {"require_pushed_authorization_requests": "yes"},
            "invalid_client_metadata",
            "require_pushed",
        ),
    ],
)
def test_bad_metadata_is_refused_naming_the_field_and_changes_nothing(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    metadata: dict[str, Any],
    error: str,
    field: str,
) -> None:
    token = initial_token(runner)
    response = register(client, token, **{**WEB_APP, **metadata})
    assert response.status_code == 400, response.json
    assert response.json["error"] == error
    assert field in response.json["error_description"]
    assert client_count(app) == 0
    # Refused metadata does not spend the token.
    assert register(client, token, **WEB_APP).status_code == 201


def _jwks() -> dict[str, Any]:
    return {"keys": [RSAKey.generate_key(2048).as_dict(private=False)]}


def _weak_jwks() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns of the small key we want
        return {"keys": [RSAKey.generate_key(1024).as_dict(private=False)]}


def _keyed(key: Key) -> dict[str, Any]:
    return {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [key.as_dict()]}}


def _unknown_curve(kty: str, crv: str) -> dict[str, Any]:
    key = ECKey.generate_key("P-256") if kty == "EC" else OKPKey.generate_key("Ed25519")
    named = {**key.as_dict(private=False), "crv": crv}
    return {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [named]}}


@pytest.mark.parametrize(
    "metadata, field",
    [
        ({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": "no"}}, "jwks"),
        (
            {
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [RSAKey.generate_key(2048).as_dict(private=True)]},
            },
            "jwks",
        ),
        (
            {
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": _jwks(),
                "jwks_uri": "https://app.example.com/jwks",
            },
            "jwks",
        ),
        (
            {"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://x.example/j"},
            "jwks_uri",
        ),
        *(
            ({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri}, "jwks_uri")
            for uri in (
                "http://127.0.0.1:9000/jwks",
                "https://127.0.0.1/jwks",
                "https://10.0.0.7/jwks",
                "https://169.254.169.254/latest/meta-data",
                "https://[::1]/jwks",
                "https://localhost/jwks",
                "https://[app.example.com/jwks",
                "https://app.example.com:99999/jwks",
                "https://app.example.com/" + "j" * 2048,  # wider than the column
            )
        ),
        ({"token_endpoint_auth_method": "none", "jwks": _jwks()}, "jwks"),
        # RFC 7518 §3.3: an RSA key under 2048 bits can be factored, and its factorer signs.
        ({"token_endpoint_auth_method": "private_key_jwt", "jwks": _weak_jwks()}, "2048 bits"),
        # Keys that can never sign what we verify: key agreement only, or another curve.
        (_keyed(OKPKey.generate_key("X25519", private=False)), "curve X25519"),
        (_keyed(OKPKey.generate_key("X448", private=False)), "curve X448"),
        (_keyed(ECKey.generate_key("P-384", private=False)), "curve P-384"),
        # A curve no library knows: refused like any key that cannot be read, never a 500.
        (_unknown_curve("EC", "P-999"), "P-999"),
        (_unknown_curve("OKP", "Ed1"), "Ed1"),
    ],
)
def test_bad_keys_are_refused_and_change_nothing(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    metadata: dict[str, Any],
    field: str,
) -> None:
    response = register(client, initial_token(runner), **{**WEB_APP, **metadata})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_client_metadata"
    assert field in response.json["error_description"]
    assert client_count(app) == 0


@pytest.mark.parametrize(
    "key",
    [
        {"kty": "RSA", "n": "@@@", "e": "AQAB"},  # no base64
        {"kty": "OKP", "crv": "Ed25519", "x": "zz"},  # too short for its curve
    ],
)
def test_a_key_that_cannot_be_read_is_named_so_without_an_empty_reason(
    client: FlaskClient, runner: FlaskCliRunner, key: dict[str, Any]
) -> None:
    jwks = {"keys": [key]}
    metadata = {"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks}
    response = register(client, initial_token(runner), **{**WEB_APP, **metadata})
    assert response.status_code == 400
    assert response.json["error_description"].endswith("jwks holds a key that cannot be read")


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"client_name=x", "application/x-www-form-urlencoded"),
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
        (_DEEP, "application/json"),
        (b'{"client_name": ' + _DEEP + b"}", "application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_invalid_client_metadata(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, body: bytes, content_type: str
) -> None:
    token = initial_token(runner)
    response = client.post(
        "/oauth/register", data=body, headers={**bearer(token), "Content-Type": content_type}
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_client_metadata"
    assert client_count(app) == 0
    # A refused body does not spend the token.
    assert register(client, token, **WEB_APP).status_code == 201


@pytest.mark.parametrize("body", [_DEEP, b'{"client_name": ' + _DEEP + b"}"])
def test_a_deeply_nested_update_is_refused_and_changes_nothing(
    client: FlaskClient, runner: FlaskCliRunner, body: bytes
) -> None:
    registered = register(client, initial_token(runner), WEB_APP).json
    response = _manage(client, "PUT", registered, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_client_metadata"
    assert _manage(client, "GET", registered).json == {
        key: value for key, value in registered.items() if key != "client_secret"
    }


def test_an_update_naming_the_client_with_a_lone_surrogate_is_refused_and_changes_nothing(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    registered = register(client, initial_token(runner), WEB_APP).json
    body = json.dumps({"client_id": registered["client_id"], "client_name": "New \udc00"})
    response = _manage(client, "PUT", registered, data=body, content_type="application/json")
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_client_metadata"
    assert "client_name" in response.json["error_description"]
    assert _manage(client, "GET", registered).json["client_name"] == registered["client_name"]


def test_a_scope_of_only_spaces_is_as_if_left_out(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    # As at the token endpoint: only delimiters name no scope, so the default applies; a
    # client registered with none at all could get only tokens that open nothing.
    service = {"client_name": "Sync", "grant_types": ["client_credentials"]}
    omitted = register(client, initial_token(runner), service).json
    blank = register(client, initial_token(runner), service, scope="   ").json
    assert blank["scope"] == omitted["scope"] != ""


_REPEATED = [
    b'{"client_name": "Photos", "redirect_uris": ["https://photos.example.com/cb"],'
    b' "redirect_uris": ["https://evil.example/cb"]}',
    b'{"client_name": "Photos", "redirect_uris": ["https://photos.example.com/cb"],'
    b' "jwks": {"keys": [], "keys": []}}',
]


@pytest.mark.parametrize("body", _REPEATED)
def test_metadata_that_gives_a_field_twice_is_refused(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, body: bytes
) -> None:
    # RFC 8259 leaves a repeated name to the reader: a filter in front that reads the first
    # redirect URI would have judged another registration than the one stored.
    token = initial_token(runner)
    response = client.post(
        "/oauth/register", data=body, headers={**bearer(token), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["error"] == "invalid_client_metadata"
    assert "must be given once" in response.json["error_description"]
    assert client_count(app) == 0


def test_an_update_that_gives_a_field_twice_is_refused_and_changes_nothing(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    registered = register(client, initial_token(runner), WEB_APP).json
    document = json.dumps({"client_id": registered["client_id"], "client_name": "New"})
    body = document[:-1] + ', "client_name": "Newer"}'
    response = _manage(client, "PUT", registered, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json == {
        "error": "invalid_client_metadata",
        "error_description": "'client_name' must be given once",
    }
    assert _manage(client, "GET", registered).json["client_name"] == registered["client_name"]


def test_a_key_client_registers_with_private_key_jwt(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    jwks = _jwks()
    response = register(
        client,
        initial_token(runner),
        client_name="Keyed service",
        grant_types=["client_credentials"],
        token_endpoint_auth_method="private_key_jwt",
        jwks=jwks,
    )
    assert response.status_code == 201, response.json
    assert response.json["token_endpoint_auth_method"] == "private_key_jwt"
    assert response.json["jwks"]["keys"][0]["n"] == jwks["keys"][0]["n"]
    assert "client_secret" not in response.json


def test_registered_clients_are_never_first_party_nor_resource_servers(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    response = register(
        client,
        initial_token(runner),
        **WEB_APP,
        first_party=True,
        introspect=True,
        can_introspect=True,
    )
    assert response.status_code == 201
    with app.app_context():
        made = db.session.scalars(
            select(Client).where(Client.client_id == response.json["client_id"])
        ).one()
        assert not made.first_party and not made.can_introspect


def test_a_registered_public_client_signs_a_user_in_with_pkce(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    registered = register(client, initial_token(runner), **WEB_APP)
    assert registered.status_code == 201
    assert "client_secret" not in registered.json
    client_id = registered.json["client_id"]
    actions.user("alice")
    flow = Flow(app, client)
    flow.login()
    verifier, challenge = pkce()
    first = flow.authorize(client_id, challenge)
    assert first.headers["Location"].startswith("/consent?")  # never first-party: consent asked
    allowed = flow.consent(first.headers["Location"])
    code = query_of(allowed.headers["Location"])["code"]
    tokens = flow.exchange(client_id, None, code, verifier)
    assert tokens.status_code == 200, tokens.json
    assert claims_of(tokens.json["access_token"])["client_id"] == client_id
    assert "id_token" in tokens.json and "refresh_token" in tokens.json
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.json["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200
    # Without its verifier, or with the password grant, it gets nothing.
    password = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "x" * 9,
            "client_id": client_id,
        },
    )
    assert password.status_code in (400, 401)
    assert password.json["error"] in ("unauthorized_client", "unsupported_grant_type")


def _manage(client: FlaskClient, method: str, body: dict[str, Any], **kw: Any) -> Any:
    token = body["registration_access_token"]
    path = body["registration_client_uri"].removeprefix(ISSUER)
    return client.open(path, method=method, headers=bearer(token), **kw)


def _web_app_with_alice_signed_in(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions, **metadata: Any
) -> tuple[dict[str, Any], Flow]:
    """WEB_APP (with `metadata` changed) registered, and alice signed in at the browser flow:
    (registration, flow)."""
    registered = register(client, initial_token(runner), WEB_APP, **metadata).json
    actions.user("alice")
    flow = Flow(app, client)
    flow.login()
    return registered, flow


def test_a_narrowed_scope_narrows_the_tokens_its_refresh_tokens_bring(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    registered, flow = _web_app_with_alice_signed_in(app, client, runner, actions)
    client_id = registered["client_id"]
    verifier, challenge = pkce()
    asked = flow.authorize(client_id, challenge)
    code = query_of(flow.consent(asked.headers["Location"]).headers["Location"])["code"]
    tokens = flow.exchange(client_id, None, code, verifier).json
    assert tokens["scope"] == "openid profile junk:read"

    def refresh(**scope: str) -> Any:
        nonlocal tokens
        data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        answer = client.post("/oauth/token", data={**data, "client_id": client_id, **scope})
        if answer.status_code == 200:
            tokens = answer.json
        return answer

    update = {**WEB_APP, "client_id": client_id, "scope": "openid junk:read"}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    narrowed = refresh()
    assert narrowed.status_code == 200, narrowed.json
    assert narrowed.json["scope"] == "openid junk:read"
    assert claims_of(narrowed.json["access_token"])["scope"] == "openid junk:read"
    # Asking for a scope the login has but the client no longer may: refused, nothing spent.
    wider = refresh(scope="openid profile")
    assert wider.status_code == 400 and wider.json["error"] == "invalid_scope"
    assert refresh(scope="junk:read").json["scope"] == "junk:read"
    # Nothing of the login left to the client: refused.
    update["scope"] = "junk:write"
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    gone = refresh()
    assert gone.status_code == 400 and gone.json["error"] == "invalid_scope"


def test_a_code_brings_the_scope_its_app_still_registers(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    registered, flow = _web_app_with_alice_signed_in(app, client, runner, actions)
    client_id = registered["client_id"]
    update = {**WEB_APP, "client_id": client_id}

    def code_then_scope(scope: str) -> tuple[str, str]:
        verifier, challenge = pkce()
        code = flow.code_for(client_id, challenge)
        # RFC 7592: the app narrows its own scope between the user's consent and the exchange.
        assert (
            _manage(client, "PUT", registered, json={**update, "scope": scope}).status_code == 200
        )
        return code, verifier

    code, verifier = code_then_scope("openid junk:read")
    tokens = flow.exchange(client_id, None, code, verifier)
    assert tokens.status_code == 200, tokens.json
    assert tokens.json["scope"] == "openid junk:read"
    assert claims_of(tokens.json["access_token"])["scope"] == "openid junk:read"
    # Nothing of the consent left to the app: refused, and the code is not spent by it.
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    code, verifier = code_then_scope("junk:write")
    gone = flow.exchange(client_id, None, code, verifier)
    assert gone.status_code == 400 and gone.json["error"] == "invalid_scope"
    update["scope"] = "junk:read"
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    kept = flow.exchange(client_id, None, code, verifier)
    assert kept.status_code == 200 and kept.json["scope"] == "junk:read", kept.json


def _signed_in(app: Flask, client: FlaskClient, registered: dict[str, Any]) -> dict[str, Any]:
    """Alice's tokens from the registered client, by the code flow."""
    flow = Flow(app, client)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(registered["client_id"], challenge)
    tokens = flow.exchange(registered["client_id"], registered.get("client_secret"), code, verifier)
    assert tokens.status_code == 200, tokens.json
    return dict(tokens.json)


def _refreshed(client: FlaskClient, client_id: str, refresh_token: str, **auth: Any) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return client.post("/oauth/token", data=data, **auth)


@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
def test_a_client_that_becomes_public_loses_the_logins_it_had_to_authenticate_for(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions, method: str
) -> None:
    actions.user("alice")
    keys = {"jwks": _jwks()} if method == "private_key_jwt" else {}
    registered = register(
        client, initial_token(runner), WEB_APP, token_endpoint_auth_method=method, **keys
    ).json
    if method == "private_key_jwt":  # sign in while it is a secret client, then take keys
        update = {
            **WEB_APP,
            "client_id": registered["client_id"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        registered["client_secret"] = _manage(client, "PUT", registered, json=update).json[
            "client_secret"
        ]
        tokens = _signed_in(app, client, registered)
        update = {
            **WEB_APP,
            "client_id": registered["client_id"],
            "token_endpoint_auth_method": method,
            **keys,
        }
        assert _manage(client, "PUT", registered, json=update).status_code == 200
    else:
        tokens = _signed_in(app, client, registered)
    public = _manage(
        client, "PUT", registered, json={**WEB_APP, "client_id": registered["client_id"]}
    )
    assert public.status_code == 200 and public.json["token_endpoint_auth_method"] == "none"
    # Its refresh tokens were given to a client that had to prove itself: now anyone holding
    # one could spend it with no credential at all. They, and the access tokens, are dead.
    refused = _refreshed(client, registered["client_id"], tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert not works(client, tokens["access_token"])
    # Signing in again, as the public client it now is, works.
    assert _signed_in(app, client, {"client_id": registered["client_id"]})["refresh_token"]


def _made_public(app: Flask, registered: dict[str, Any]) -> Callable[[], object]:
    """The registered client's RFC 7592 update that makes it public, as another request."""

    def put() -> None:
        update = {**WEB_APP, "client_id": registered["client_id"]}
        public = _manage(app.test_client(), "PUT", registered, json=update)
        assert public.status_code == 200 and public.json["token_endpoint_auth_method"] == "none"

    return put


def _families_of(app: Flask, client_id: str) -> int:
    """How many logins (token families) the client has been issued."""
    with app.app_context():
        query = select(func.count()).where(TokenFamily.client_id == client_id)
        return int(db.session.scalar(query) or 0)


def _code_of_a_confidential_client(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> tuple[dict[str, Any], Flow, str, str]:
    """A registered client with a secret, and a code alice got for it: its (registration,
    flow, code, verifier)."""
    registered, flow = _web_app_with_alice_signed_in(
        app, client, runner, actions, token_endpoint_auth_method="client_secret_basic"
    )
    verifier, challenge = pkce()
    return registered, flow, flow.code_for(registered["client_id"], challenge), verifier


def test_a_client_made_public_after_authenticating_gets_no_login(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    actions: Actions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exchange authenticated with the secret; the update making the client public, and
    # revoking its logins, commits before the login is stored: none is.
    registered, flow, code, verifier = _code_of_a_confidential_client(app, client, runner, actions)
    store_issued, put = issuing.store_issued, _made_public(app, registered)

    def made_public_first(*args: Any, **kwargs: Any) -> Any:
        putting = threading.Thread(target=put)  # another request, with its own app context
        putting.start()
        putting.join()
        return store_issued(*args, **kwargs)

    monkeypatch.setattr(issuing, "store_issued", made_public_first)
    exchanged = flow.exchange(registered["client_id"], registered["client_secret"], code, verifier)
    assert exchanged.status_code == 401 and exchanged.json["error"] == "invalid_client"
    assert _families_of(app, registered["client_id"]) == 0


def test_a_client_made_public_while_its_login_is_stored_ends_that_login(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    actions: Actions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exchange has checked that the client still authenticates when the update making it
    # public comes: the update waits for the login to be stored, then revokes it.
    registered, flow, code, verifier = _code_of_a_confidential_client(app, client, runner, actions)
    signed_in, racers = sessions.signed_in, []

    def then_made_public(conn: Any, session_id: str) -> bool:
        racers.append(run_behind(app, conn, _made_public(app, registered)))
        return signed_in(conn, session_id)

    monkeypatch.setattr(sessions, "signed_in", then_made_public)
    exchanged = flow.exchange(registered["client_id"], registered["client_secret"], code, verifier)
    monkeypatch.undo()
    for racer in racers:
        racer.join()
    assert len(racers) == 1
    assert exchanged.status_code == 200, exchanged.json
    refused = _refreshed(client, registered["client_id"], exchanged.json["refresh_token"])
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert not works(client, exchanged.json["access_token"])


def test_a_client_whose_method_changes_but_still_authenticates_keeps_its_logins(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    actions.user("alice")
    registered = register(
        client, initial_token(runner), WEB_APP, token_endpoint_auth_method="client_secret_basic"
    ).json
    tokens = _signed_in(app, client, registered)
    update = {
        **WEB_APP,
        "client_id": registered["client_id"],
        "token_endpoint_auth_method": "client_secret_post",
    }
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    auth = {"client_secret": registered["client_secret"]}
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": registered["client_id"],
            **auth,
        },
    )
    assert refreshed.status_code == 200, refreshed.json
    assert works(client, tokens["access_token"])


def test_a_public_client_updated_keeps_its_logins(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    actions.user("alice")
    registered = register(client, initial_token(runner), **WEB_APP).json
    tokens = _signed_in(app, client, registered)
    update = {**WEB_APP, "client_id": registered["client_id"], "client_name": "Renamed"}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    assert _refreshed(client, registered["client_id"], tokens["refresh_token"]).status_code == 200


def test_a_code_sent_to_a_redirect_uri_the_client_dropped_is_not_redeemed(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    other = "https://app.example.com/other"
    registered = register(
        client, initial_token(runner), **{**WEB_APP, "redirect_uris": [REDIRECT, other]}
    ).json
    client_id = registered["client_id"]
    actions.user("alice")
    flow = Flow(app, client)
    flow.login()
    verifier, challenge = pkce()
    dropped = flow.code_for(client_id, challenge)
    kept_verifier, kept_challenge = pkce()
    kept = flow.code_for(client_id, kept_challenge, redirect_uri=other)
    update = {**WEB_APP, "client_id": client_id, "redirect_uris": [other]}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    # Whoever holds the URI now may hold a code sent there: it is not the client's any more.
    refused = flow.exchange(client_id, None, dropped, verifier)
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert (
        flow.exchange(client_id, None, kept, kept_verifier, redirect_uri=other).status_code == 200
    )


def test_a_code_sent_to_the_only_redirect_uri_unnamed_is_not_redeemed_once_it_is_replaced(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    registered, flow = _web_app_with_alice_signed_in(app, client, runner, actions)
    client_id = registered["client_id"]
    verifier, challenge = pkce()
    # RFC 6749 §3.1.2.3: with one URI registered, the request may leave it out; it went there.
    code = flow.code_for(client_id, challenge, redirect_uri=None)
    update = {**WEB_APP, "client_id": client_id, "redirect_uris": ["https://app.example.com/new"]}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    refused = flow.exchange(client_id, None, code, verifier, redirect_uri=None)
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert "no longer registered" in refused.json["error_description"]
    assert _families_of(app, client_id) == 0


def test_a_code_sent_to_the_only_redirect_uri_unnamed_is_redeemed_while_it_stays(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    registered, flow = _web_app_with_alice_signed_in(app, client, runner, actions)
    client_id = registered["client_id"]
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, redirect_uri=None)
    update = {**WEB_APP, "client_id": client_id, "client_name": "Renamed"}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    # RFC 6749 §4.1.3: the request named no redirect_uri, so the token request need not either.
    exchanged = flow.exchange(client_id, None, code, verifier, redirect_uri=None)
    assert exchanged.status_code == 200, exchanged.json
    assert _families_of(app, client_id) == 1


def test_a_code_for_a_loopback_redirect_uri_still_registered_is_redeemed_on_any_port(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    loopback = "http://127.0.0.1/callback"
    native = {**WEB_APP, "redirect_uris": [loopback, REDIRECT]}
    registered = register(client, initial_token(runner), **native).json
    actions.user("alice")
    flow = Flow(app, client)
    flow.login()
    verifier, challenge = pkce()
    sent_to = "http://127.0.0.1:49152/callback"  # RFC 8252 §7.3: any port
    code = flow.code_for(registered["client_id"], challenge, redirect_uri=sent_to)
    update = {**native, "client_id": registered["client_id"], "redirect_uris": [loopback]}
    assert _manage(client, "PUT", registered, json=update).status_code == 200
    exchanged = flow.exchange(registered["client_id"], None, code, verifier, redirect_uri=sent_to)
    assert exchanged.status_code == 200, exchanged.json


def test_a_client_without_a_name_is_shown_by_its_id_after_an_update_too(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    unnamed = {k: v for k, v in WEB_APP.items() if k != "client_name"}
    registered = register(client, initial_token(runner), **unnamed).json
    assert registered["client_name"] == registered["client_id"]  # RFC 7591 §2
    update = {**unnamed, "client_id": registered["client_id"]}
    updated = _manage(client, "PUT", registered, json=update)
    assert updated.status_code == 200 and updated.json["client_name"] == registered["client_id"]
    assert _manage(client, "GET", registered).json["client_name"] == registered["client_id"]


def test_read_update_and_delete_with_the_registration_access_token(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    registered = register(
        client, initial_token(runner), WEB_APP, token_endpoint_auth_method="client_secret_post"
    ).json
    client_id, secret = registered["client_id"], registered["client_secret"]
    read = _manage(client, "GET", registered)
    assert read.status_code == 200 and read.headers["Cache-Control"] == "no-store"
    assert "client_secret" not in read.json  # shown once, never again
    expected = {k: v for k, v in registered.items() if k != "client_secret"}
    assert read.json == expected

    update = {
        "client_id": client_id,
        "client_secret": secret,
        "client_name": "Photo App 2",
        "redirect_uris": ["https://app.example.com/new"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "junk:read",
    }
    updated = _manage(client, "PUT", registered, json=update)
    assert updated.status_code == 200, updated.json
    assert updated.json["client_name"] == "Photo App 2"
    assert updated.json["redirect_uris"] == ["https://app.example.com/new"]
    assert updated.json["grant_types"] == ["authorization_code"]
    assert updated.json["token_endpoint_auth_method"] == "client_secret_basic"
    assert updated.json["registration_access_token"] == registered["registration_access_token"]
    assert "client_secret" not in updated.json  # still a secret client: the same secret
    assert _manage(client, "GET", registered).json["client_name"] == "Photo App 2"

    # Becoming public drops the secret; becoming confidential again issues a new one, once.
    public = _manage(client, "PUT", registered, json={**WEB_APP, "client_id": client_id})
    assert public.status_code == 200 and public.json["token_endpoint_auth_method"] == "none"
    confidential = _manage(
        client,
        "PUT",
        registered,
        json={
            **WEB_APP,
            "client_id": client_id,
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    assert confidential.status_code == 200
    new_secret = confidential.json["client_secret"]
    assert new_secret != secret
    with app.app_context():
        made = db.session.scalars(select(Client).where(Client.client_id == client_id)).one()
        assert made.check_client_secret(new_secret) and not made.check_client_secret(secret)

    deleted = _manage(client, "DELETE", registered)
    assert deleted.status_code == 204
    assert deleted.data == b"" and "Content-Type" not in deleted.headers
    assert client_count(app) == 0
    again = _manage(client, "GET", registered)
    assert again.status_code == 401 and again.json["error"] == "invalid_token"


def test_deleting_a_registration_ends_its_tokens(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    registered = register(
        client, initial_token(runner), grant_types=["client_credentials"], response_types=[]
    ).json
    auth = (registered["client_id"], registered["client_secret"])
    issued = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert issued.status_code == 200
    assert _manage(client, "DELETE", registered).status_code == 204
    after = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert after.status_code == 401


@pytest.mark.parametrize(
    "change, error, named",
    [
        ({"client_id": None}, "invalid_request", "client_id"),
        ({"client_id": "someone-else"}, "invalid_request", "client_id"),
        ({"client_secret": "wrong"}, "invalid_request", "client_secret"),
        ({"client_secret": "\ud800"}, "invalid_request", "client_secret"),  # not encodable
        ({"registration_access_token": "x"}, "invalid_request", "registration_access_token"),
        ({"client_id_issued_at": 1}, "invalid_request", "client_id_issued_at"),
        ({"grant_types": ["password"]}, "invalid_client_metadata", "grant_types"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri", "redirect URI"),
        ({"redirect_uris": ["https://[evil.example/cb"]}, "invalid_redirect_uri", "redirect URI"),
        (
            {"redirect_uris": ["https://app.example.com@evil.example/cb"]},
            "invalid_redirect_uri",
            "user name",
        ),
        ({"dpop_bound_access_tokens": "false"}, "invalid_client_metadata", "dpop_bound"),
        (
            {"token_endpoint_auth_method": "private_key_jwt", "jwks": _weak_jwks()},
            "invalid_client_metadata",
            "2048 bits",
        ),
    ],
)
def test_a_bad_update_is_refused_and_changes_nothing(
    client: FlaskClient,
    runner: FlaskCliRunner,
    change: dict[str, Any],
    error: str,
    named: str,
) -> None:
    registered = register(
        client, initial_token(runner), WEB_APP, token_endpoint_auth_method="client_secret_basic"
    ).json
    update = {**WEB_APP, "client_id": registered["client_id"], "client_name": "Changed", **change}
    update = {k: v for k, v in update.items() if v is not None}
    response = _manage(client, "PUT", registered, json=update)
    assert response.status_code == 400, response.json
    assert response.json["error"] == error and named in response.json["error_description"]
    assert _manage(client, "GET", registered).json["client_name"] == "Photo App"


def test_another_clients_registration_token_is_refused(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions
) -> None:
    mine = register(client, initial_token(runner), **WEB_APP).json
    theirs = register(client, initial_token(runner), **WEB_APP).json
    cli_made = actions.oauth_client("cli-made")
    targets = [theirs["client_id"], cli_made.client_id, "no-such-client", "x" * 500]
    for target in targets:
        for method in ("GET", "PUT", "DELETE"):
            response = client.open(
                f"/oauth/register/{target}",
                method=method,
                headers=bearer(mine["registration_access_token"]),
                json={"client_id": target, **WEB_APP} if method == "PUT" else None,
            )
            assert response.status_code == 401, (target, method)
            assert response.json["error"] == "invalid_token"
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    # Nothing changed; the initial access token is not a registration access token either.
    assert client_count(app) == 3
    token = initial_token(runner)
    response = client.get(f"/oauth/register/{mine['client_id']}", headers=bearer(token))
    assert response.status_code == 401
    no_token = client.get(f"/oauth/register/{mine['client_id']}")
    assert no_token.status_code == 401
    assert no_token.headers["WWW-Authenticate"] == 'Bearer realm="tokenserver"'


def test_tokens_are_stored_only_as_digests(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    token = initial_token(runner)
    body = register(client, token, WEB_APP, token_endpoint_auth_method="client_secret_basic").json
    secrets_shown = [token, body["registration_access_token"], body["client_secret"]]
    with app.app_context():
        dump = "\n".join(
            repr(tuple(row))
            for table in ("clients", "initial_access_tokens")
            for row in db.session.execute(db.metadata.tables[table].select())
        )
    assert body["client_id"] in dump  # the scan sees the rows
    for secret in secrets_shown:
        assert secret not in dump


def test_cli_registration_token_prints_a_token_that_expires_when_asked(
    app: Flask, runner: FlaskCliRunner
) -> None:
    now = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        result = runner.invoke(args=["clients", "registration-token", "--expires-in", "3600"])
        default = runner.invoke(args=["clients", "registration-token"])
    assert result.exit_code == 0 and default.exit_code == 0
    assert TOKEN_LINE.match(result.stdout.strip())
    assert "2031-05-01T13:00:00Z" in result.stderr and "one client" in result.stderr
    assert "2031-05-02T12:00:00Z" in default.stderr  # a day by default
    with app.app_context():
        expiries = sorted(db.session.scalars(select(InitialAccessToken.expires_at)))
    assert expiries == [now + timedelta(hours=1), now + timedelta(days=1)]
    for bad in ("0", "-5", "abc", str(31 * 86400)):
        refused = runner.invoke(args=["clients", "registration-token", "--expires-in", bad])
        assert refused.exit_code == 2, bad


def test_registration_is_audited_without_secrets(
    client: FlaskClient, runner: FlaskCliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tokenserver.audit")
    token = initial_token(runner)
    body = register(client, token, **WEB_APP).json
    _manage(client, "PUT", body, json={**WEB_APP, "client_id": body["client_id"]})
    _manage(client, "DELETE", body)
    events = [r.fields for r in caplog.records if r.name == "tokenserver.audit"]  # type: ignore[attr-defined]
    names = [e["event"] for e in events]
    assert names == [
        "client.registration_token_issued",
        "client.created",
        "client.updated",
        "client.deleted",
    ]
    assert events[1]["dynamic"] is True and events[1]["client_id"] == body["client_id"]
    logged = json.dumps(events, default=str)
    assert token not in logged and body["registration_access_token"] not in logged


def test_purge_deletes_initial_access_tokens_expired_long_ago(
    app: Flask, runner: FlaskCliRunner
) -> None:
    now = datetime.now(UTC)
    with time_machine.travel(now - timedelta(days=3), tick=False):
        initial_token(runner, "--expires-in", "3600")
    with time_machine.travel(now - timedelta(hours=2), tick=False):
        initial_token(runner, "--expires-in", "3600")  # expired an hour ago: kept a day
    live = initial_token(runner)
    output = runner.invoke(args=["tokens", "purge"]).output
    assert "1 initial access token and" in output
    with app.app_context():
        left = db.session.scalars(select(InitialAccessToken.token_hash)).all()
    assert len(left) == 2
    from tokenserver.digests import digest

    assert digest(live) in left


def test_metadata_documents_name_the_registration_endpoint(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        assert client.get(path).json["registration_endpoint"] == f"{ISSUER}/oauth/register"


def test_register_with_requests_then_client_credentials_with_authlib_over_gunicorn(
    live_server: LiveServer, runner: FlaskCliRunner
) -> None:
    token = initial_token(runner)
    response = requests.post(
        f"{live_server.url}/oauth/register",
        json={
            "client_name": "Reporting job",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "token_endpoint_auth_method": "client_secret_post",
            "scope": "junk:read",
        },
        headers=bearer(token),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    session = OAuth2Session(
        body["client_id"],
        body["client_secret"],
        token_endpoint_auth_method="client_secret_post",
        scope="junk:read",
    )
    issued = session.fetch_token(f"{live_server.url}/oauth/token", grant_type="client_credentials")
    assert claims_of(issued["access_token"])["sub"] == body["client_id"]
    path = body["registration_client_uri"].removeprefix(ISSUER)
    read = requests.get(
        f"{live_server.url}{path}", headers=bearer(body["registration_access_token"]), timeout=10
    )
    assert read.status_code == 200 and read.json()["client_name"] == "Reporting job"
    gone = requests.delete(
        f"{live_server.url}{path}", headers=bearer(body["registration_access_token"]), timeout=10
    )
    assert gone.status_code == 204
    refused = requests.post(
        f"{live_server.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": body["client_id"],
            "client_secret": body["client_secret"],
        },
        timeout=10,
    )
    assert refused.status_code == 401


def test_failed_registration_requests_are_limited_per_ip(make_app: Any) -> None:
    app = make_app(ratelimit_enabled=True, ratelimit_token_failures="3/minute")
    client, runner = app.test_client(), app.test_cli_runner()
    good = register(client, initial_token(runner), WEB_APP).json
    for _ in range(4):  # successful registrations and reads never count
        assert _manage(client, "GET", good).status_code == 200
    guessed = bearer("guessed")
    for _ in range(3):
        assert client.post("/oauth/register", json=WEB_APP, headers=guessed).status_code == 401
    limited = register(client, initial_token(runner), WEB_APP)
    assert limited.status_code == 429 and limited.json["error"] == "too_many_requests"
    assert "Retry-After" in limited.headers
    assert client_count(app) == 1
    # The management route counts its own failures: guessed tokens, refused updates.
    path = f"/oauth/register/{good['client_id']}"
    assert client.get(path, headers=guessed).status_code == 401
    assert client.delete(path, headers=guessed).status_code == 401
    assert _manage(client, "PUT", good, json={"client_id": "other"}).status_code == 400
    assert _manage(client, "GET", good).status_code == 429
    other = client.post(
        "/oauth/register",
        json=WEB_APP,
        headers=bearer(initial_token(runner)),
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert other.status_code == 201  # another address has its own budget


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f468\u200d\U0001f4bb Dev Tools",
        "写真\u3000アプリ",
        "Photo\u00a0App",
        "עברית\u200fApp",
    ],
)
def test_a_name_may_hold_any_unicode_but_controls(
    client: FlaskClient, runner: FlaskCliRunner, name: str
) -> None:
    # An emoji's joiner, an ideographic or no-break space, a right-to-left mark: a name's own.
    response = register(client, initial_token(runner), **{**WEB_APP, "client_name": name})
    assert response.status_code == 201, response.json
    assert response.json["client_name"] == name


def test_head_on_a_registration_answers_as_get_without_a_body(
    live_server: LiveServer, runner: FlaskCliRunner
) -> None:
    registered = requests.post(
        f"{live_server.url}/oauth/register",
        json=WEB_APP,
        headers=bearer(initial_token(runner)),
        timeout=10,
    ).json()
    url = live_server.url + registered["registration_client_uri"].removeprefix(ISSUER)
    token = bearer(registered["registration_access_token"])
    head = requests.head(url, headers=token, timeout=10)
    get = requests.get(url, headers=token, timeout=10)
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["Cache-Control"] == "no-store"
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    refused = requests.head(url, headers=bearer("not-the-token"), timeout=10)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]


def test_guessed_registration_tokens_sent_with_head_count_as_failures(make_app: Any) -> None:
    app = make_app(ratelimit_enabled=True, ratelimit_token_failures="3/minute")
    client, runner = app.test_client(), app.test_cli_runner()
    good = register(client, initial_token(runner), WEB_APP).json
    path = f"/oauth/register/{good['client_id']}"
    for _ in range(3):
        assert client.head(path, headers=bearer("guessed")).status_code == 401
    assert _manage(client, "HEAD", good).status_code == 429
