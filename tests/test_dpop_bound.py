"""Clients registered with dpop_bound_access_tokens (RFC 9449 §5.2): no token without a proof."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from tokenserver.models import DEVICE_CODE, TOKEN_EXCHANGE

from .conftest import PASSWORD, Actions, RegisteredClient
from .helpers import REDIRECT, Flow, Prover, claims_of, csrf_of, pkce

ISSUER = "http://localhost:8000"
TOKEN_URL = f"{ISSUER}/oauth/token"
PHOTOS = "https://photos.example/api"
PASSWORD_GRANT = {"grant_type": "password", "username": "alice", "password": PASSWORD}
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
def prover() -> Prover:
    return Prover()


def _token(
    client: FlaskClient, caller: RegisteredClient, prover: Prover | None, **data: str
) -> Any:
    """A token request as `caller`, with a fresh proof by `prover` (None: no DPoP header)."""
    headers = {"DPoP": prover.proof("POST", TOKEN_URL)} if prover else {}
    if caller.secret is None:
        data = {**data, "client_id": caller.client_id}
        return client.post("/oauth/token", data=data, headers=headers)
    return client.post("/oauth/token", data=data, headers=headers, auth=caller.auth)


def _register(client: FlaskClient, runner: FlaskCliRunner, **metadata: Any) -> Any:
    """RFC 7591 registration with a fresh initial access token from the CLI."""
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    return client.post("/oauth/register", json=metadata, headers=headers)


def _manage(client: FlaskClient, method: str, registered: dict[str, Any], **kw: Any) -> Any:
    """RFC 7592: read or replace a registration with its registration access token."""
    headers = {"Authorization": f"Bearer {registered['registration_access_token']}"}
    path = registered["registration_client_uri"].removeprefix(ISSUER)
    return client.open(path, method=method, headers=headers, **kw)


def _proof_required(response: Any) -> None:
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_dpop_proof"
    assert response.json["error_description"] == "A DPoP proof is required for this client."
    assert "access_token" not in response.json


def _bound_to(response: Any, prover: Prover) -> dict[str, Any]:
    assert response.status_code == 200, response.json
    assert response.json["token_type"] == "DPoP"
    assert claims_of(response.json["access_token"])["cnf"] == {"jkt": prover.jkt}
    body: dict[str, Any] = response.json
    return body


# --- every grant ---------------------------------------------------------------------------


@pytest.mark.parametrize("dpop_bound", [True, False])
def test_only_a_bound_client_is_refused_a_token_without_a_proof(
    client: FlaskClient, actions: Actions, prover: Prover, dpop_bound: bool
) -> None:
    service = actions.oauth_client("svc", grants=("client_credentials",), dpop_bound=dpop_bound)
    without = _token(client, service, None, grant_type="client_credentials")
    if dpop_bound:
        _proof_required(without)
    else:  # as before: a client without the flag may still ask for a Bearer token
        assert without.status_code == 200 and without.json["token_type"] == "Bearer"
    _bound_to(_token(client, service, prover, grant_type="client_credentials"), prover)


def test_password_grant_is_refused_before_the_password_is_read(
    client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    app_client = actions.oauth_client("app", dpop_bound=True)
    _proof_required(_token(client, app_client, None, **PASSWORD_GRANT))
    # A wrong password is not even tried (no guess counted): the proof is missing first.
    wrong = {**PASSWORD_GRANT, "password": "not the password"}
    _proof_required(_token(client, app_client, None, **wrong))
    _bound_to(_token(client, app_client, prover, **PASSWORD_GRANT), prover)


@pytest.mark.parametrize("public", [False, True])
def test_a_refresh_refused_for_want_of_a_proof_spends_nothing(
    client: FlaskClient, actions: Actions, prover: Prover, public: bool
) -> None:
    actions.user("alice")
    app_client = actions.oauth_client("app", public=public, dpop_bound=True)
    login = _bound_to(_token(client, app_client, prover, **PASSWORD_GRANT), prover)
    refresh = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    _proof_required(_token(client, app_client, None, **refresh))
    # Not spent: a spent refresh token presented again would revoke the login (invalid_grant).
    renewed = _bound_to(_token(client, app_client, prover, **refresh), prover)
    assert renewed["refresh_token"] != login["refresh_token"]


@pytest.mark.parametrize("public", [False, True])
def test_a_code_refused_for_want_of_a_proof_is_exchanged_with_one(
    flow: Flow, actions: Actions, prover: Prover, public: bool
) -> None:
    client_id, secret = flow.register(public=public, dpop_bound=True)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    _proof_required(flow.exchange(client_id, secret, code, verifier))
    # Not spent: a second use of a spent code is invalid_grant (and revokes its tokens).
    proof = {"DPoP": prover.proof("POST", TOKEN_URL)}
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    if secret is None:
        exchanged = flow.client.post(
            "/oauth/token", data={**data, "client_id": client_id}, headers=proof
        )
    else:
        exchanged = flow.client.post(
            "/oauth/token", data=data, headers=proof, auth=(client_id, secret)
        )
    _bound_to(exchanged, prover)


def test_a_device_poll_refused_for_want_of_a_proof_neither_counts_nor_spends(
    app: Flask, client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    tv = actions.oauth_client(
        "TV", public=True, grants=(DEVICE_CODE, "refresh_token"), dpop_bound=True
    )
    # The device authorization endpoint issues no token: no proof is asked for there.
    started = client.post("/oauth/device_authorization", data={"client_id": tv.client_id})
    assert started.status_code == 200, started.json
    codes = started.json
    poll = {"grant_type": DEVICE_CODE, "device_code": codes["device_code"]}
    _proof_required(_token(client, tv, None, **poll))
    # Not counted as a poll: a poll this soon after one would be slow_down.
    pending = _token(client, tv, prover, **poll)
    assert pending.status_code == 400 and pending.json["error"] == "authorization_pending"

    Flow(app, client).login()
    page = client.get("/device")
    question = client.post(
        "/device", data={"csrf_token": csrf_of(page.text), "user_code": codes["user_code"]}
    )
    answer = {"csrf_token": csrf_of(question.text), "user_code": codes["user_code"]}
    assert client.post("/device", data={**answer, "decision": "allow"}).status_code == 200
    _proof_required(_token(client, tv, None, **poll))
    # Not spent: a device code gets its tokens once.
    _bound_to(_token(client, tv, prover, **poll), prover)


def test_token_exchange_is_refused_without_a_proof(
    client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    front = actions.oauth_client("front")
    # A resource server of the subject token's audience (ours), exchanging it for PHOTOS.
    gateway = actions.oauth_client(
        "gateway", grants=(TOKEN_EXCHANGE,), audiences=(ISSUER, PHOTOS), dpop_bound=True
    )
    subject = actions.token(front).json["access_token"]
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN,
        "resource": PHOTOS,
    }
    _proof_required(_token(client, gateway, None, **exchange))
    _bound_to(_token(client, gateway, prover, **exchange), prover)


# --- client authentication comes first ----------------------------------------------------


def test_bad_client_credentials_are_invalid_client_not_a_missing_proof(
    client: FlaskClient, actions: Actions
) -> None:
    service = actions.oauth_client("svc", grants=("client_credentials",), dpop_bound=True)
    cc = {"grant_type": "client_credentials"}
    wrong_secret = client.post("/oauth/token", data=cc, auth=(service.client_id, "wrong"))
    assert wrong_secret.status_code == 401 and wrong_secret.json["error"] == "invalid_client"
    # A bound public client's id with a made-up secret: credentials that fail, whoever it is.
    phone = actions.oauth_client("phone", public=True, dpop_bound=True)
    posing = client.post("/oauth/token", data=cc, auth=(phone.client_id, "made-up"))
    assert posing.status_code == 401 and posing.json["error"] == "invalid_client"


def test_introspection_and_revocation_need_no_proof(
    client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    service = actions.oauth_client("svc", grants=("client_credentials",), dpop_bound=True)
    token = _bound_to(_token(client, service, prover, grant_type="client_credentials"), prover)
    form = {"token": token["access_token"]}
    introspected = client.post("/oauth/introspect", data=form, auth=service.auth)
    assert introspected.status_code == 200 and introspected.json["active"] is True
    assert client.post("/oauth/revoke", data=form, auth=service.auth).status_code == 200
    assert client.post("/oauth/introspect", data=form, auth=service.auth).json == {"active": False}


# --- registered over HTTP (RFC 7591 / 7592) -------------------------------------------------


def test_a_registered_bound_client_gets_only_dpop_tokens(
    client: FlaskClient, runner: FlaskCliRunner, prover: Prover
) -> None:
    registered = _register(
        client,
        runner,
        client_name="Agent",
        grant_types=["client_credentials"],
        dpop_bound_access_tokens=True,
    )
    assert registered.status_code == 201, registered.json
    assert registered.json["dpop_bound_access_tokens"] is True
    assert _manage(client, "GET", registered.json).json["dpop_bound_access_tokens"] is True
    agent = RegisteredClient(registered.json["client_id"], registered.json["client_secret"])
    _proof_required(_token(client, agent, None, grant_type="client_credentials"))
    _bound_to(_token(client, agent, prover, grant_type="client_credentials"), prover)


def test_an_update_turns_the_requirement_on_and_off(
    client: FlaskClient, runner: FlaskCliRunner, prover: Prover
) -> None:
    metadata = {"client_name": "Agent", "grant_types": ["client_credentials"]}
    registered = _register(client, runner, **metadata).json
    assert registered["dpop_bound_access_tokens"] is False
    agent = RegisteredClient(registered["client_id"], registered["client_secret"])
    update = {**metadata, "client_id": agent.client_id}

    on = _manage(client, "PUT", registered, json={**update, "dpop_bound_access_tokens": True})
    assert on.status_code == 200, on.json
    assert on.json["dpop_bound_access_tokens"] is True
    assert _manage(client, "GET", registered).json["dpop_bound_access_tokens"] is True
    _proof_required(_token(client, agent, None, grant_type="client_credentials"))
    _bound_to(_token(client, agent, prover, grant_type="client_credentials"), prover)

    # RFC 7592 §2.2: an update replaces the metadata, so leaving the field out turns it off.
    off = _manage(client, "PUT", registered, json=update)
    assert off.status_code == 200 and off.json["dpop_bound_access_tokens"] is False
    plain = _token(client, agent, None, grant_type="client_credentials")
    assert plain.status_code == 200 and plain.json["token_type"] == "Bearer"


def test_a_registration_without_the_field_is_not_bound(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    web_app = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
    registered = _register(client, runner, **web_app).json
    assert registered["dpop_bound_access_tokens"] is False
    assert _manage(client, "GET", registered).json["dpop_bound_access_tokens"] is False
