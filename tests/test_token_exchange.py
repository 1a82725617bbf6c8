"""Token exchange (RFC 8693): a resource server swaps a user's token for a narrower one."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
import pytest
import requests
import time_machine
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import create_engine

from tokenserver.models import TOKEN_EXCHANGE

from .conftest import PASSWORD, Actions, LiveServer, RegisteredClient
from .helpers import (
    Flow,
    Prover,
    claims_of,
    header_of,
    pkce,
    until_a_backend_waits_for_a_lock,
    verified,
)

DEFAULT = "http://localhost:8000"  # the default audience: the issuer
PHOTOS = "https://photos.example/api"
MAIL = "https://mail.example/"
PRINT = "urn:example:print"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"


@dataclass
class Setup:
    """Alice's login at the front-end app, and a gateway (a resource server) that exchanges."""

    front: RegisteredClient  # the app alice signed in with
    gateway: RegisteredClient  # serves DEFAULT and PHOTOS; may exchange
    auditor: RegisteredClient  # may introspect any token
    login: dict[str, Any]  # alice's token response

    @property
    def subject(self) -> str:
        return str(self.login["access_token"])


@pytest.fixture
def setup(actions: Actions) -> Setup:
    actions.user("alice")
    front = actions.oauth_client("front", audiences=(MAIL,))
    gateway = actions.oauth_client("gateway", grants=(TOKEN_EXCHANGE,), audiences=(DEFAULT, PHOTOS))
    auditor = actions.oauth_client("auditor", introspect=True)
    login = actions.token(front)
    assert login.status_code == 200, login.json
    return Setup(front, gateway, auditor, login.json)


def exchange(
    actions: Actions, by: RegisteredClient | None, subject: str | None, **params: Any
) -> Any:
    """POST a token exchange as client `by` (Basic auth), with `params` overriding defaults."""
    data: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN,
        **params,
    }
    data = {name: value for name, value in data.items() if value is not None}
    auth = by.auth if by is not None else None
    return actions.client.post("/oauth/token", data=data, auth=auth)


def introspect(actions: Actions, by: RegisteredClient, token: str) -> dict[str, Any]:
    response = actions.client.post("/oauth/introspect", data={"token": token}, auth=by.auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json
    return body


def refused(response: Any, status: int, error: str) -> bool:
    return (
        response.status_code == status
        and response.json["error"] == error
        and bool(response.json["error_description"])
    )


# --- what an exchange gives ---------------------------------------------------------------


def test_exchange_narrows_a_users_token_for_another_service(actions: Actions, setup: Setup) -> None:
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS, scope="junk:read")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "junk:read"
    assert "refresh_token" not in body
    assert response.headers["Cache-Control"] == "no-store"
    subject = claims_of(setup.subject)
    claims = verified(actions.client, body["access_token"], PHOTOS)
    assert claims["aud"] == PHOTOS
    assert claims["sub"] == subject["sub"] and claims["username"] == "alice"
    assert claims["scope"] == "junk:read"
    assert claims["client_id"] == setup.gateway.client_id
    assert claims["act"] == {"sub": setup.gateway.client_id}
    assert claims["exp"] <= subject["exp"]
    assert 0 < body["expires_in"] <= subject["exp"] - claims["iat"]
    assert claims["jti"] != subject["jti"]
    with pytest.raises(pyjwt.InvalidAudienceError):
        verified(actions.client, body["access_token"], DEFAULT)


def test_exchanged_token_is_active_at_introspection_with_its_actor(
    actions: Actions, setup: Setup
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).json["access_token"]
    for by in (setup.auditor, setup.gateway):  # a resource server, and the token's own client
        body = introspect(actions, by, token)
        assert body["active"] is True
        assert body["act"] == {"sub": setup.gateway.client_id}
        assert body["client_id"] == setup.gateway.client_id
        assert body["aud"] == PHOTOS and body["username"] == "alice"
    # The login's own client is not the exchanged token's client: to it, the token is unknown.
    assert introspect(actions, setup.front, token) == {"active": False}
    assert "act" not in introspect(actions, setup.auditor, setup.subject)
    # Aimed at another service, it does not open our own routes.
    me = actions.client.get("/users/me", headers=Actions.bearer(token))
    assert me.status_code == 401


def test_exchanged_token_for_the_default_audience_opens_our_routes(
    actions: Actions, setup: Setup
) -> None:
    response = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT, scope="junk:read")
    assert response.status_code == 200, response.json
    token = response.json["access_token"]
    assert verified(actions.client, token, DEFAULT)["aud"] == DEFAULT
    me = actions.client.get("/users/me", headers=Actions.bearer(token))
    assert me.status_code == 200 and me.json["username"] == "alice"
    assert actions.client.get("/junk", headers=Actions.bearer(token)).status_code == 200
    # junk:write was narrowed away.
    write = actions.client.post("/junk", json={"name": "x"}, headers=Actions.bearer(token))
    assert write.status_code == 403 and write.json["error"] == "insufficient_scope"


def test_without_scope_the_exchange_keeps_the_subjects_scope(
    actions: Actions, setup: Setup
) -> None:
    response = exchange(actions, setup.gateway, setup.subject, audience=PHOTOS)
    assert response.status_code == 200, response.json
    assert response.json["scope"] == claims_of(setup.subject)["scope"] == "junk:read junk:write"


def test_resource_and_audience_together_give_a_token_for_both(
    actions: Actions, setup: Setup
) -> None:
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS, audience=DEFAULT)
    assert response.status_code == 200, response.json
    token = response.json["access_token"]
    assert verified(actions.client, token, PHOTOS)["aud"] == [PHOTOS, DEFAULT]
    assert introspect(actions, setup.auditor, token)["active"] is True


def test_audience_may_be_given_more_than_once(actions: Actions, setup: Setup) -> None:
    # RFC 8693 §2.1: "Multiple audience parameters may be used", as `resource` may repeat.
    response = exchange(actions, setup.gateway, setup.subject, audience=[PHOTOS, DEFAULT])
    assert response.status_code == 200, response.json
    assert claims_of(response.json["access_token"])["aud"] == [PHOTOS, DEFAULT]


@pytest.mark.parametrize("name", ["subject_token", "subject_token_type", "requested_token_type"])
def test_a_repeated_exchange_parameter_is_refused_by_name(
    actions: Actions, setup: Setup, name: str
) -> None:
    value = setup.subject if name == "subject_token" else ACCESS_TOKEN
    response = exchange(actions, setup.gateway, setup.subject, **{name: [value, value]})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert f"'{name}'" in response.json["error_description"]


def test_exchanged_token_never_outlives_its_subject(actions: Actions, setup: Setup) -> None:
    with time_machine.travel(time.time(), tick=False) as clock:
        actions.user("bob")
        subject = actions.token(setup.front, "bob").json["access_token"]
        clock.shift(600)  # of the 900 s the subject token lives
        response = exchange(actions, setup.gateway, subject, audience=PHOTOS)
        assert response.status_code == 200, response.json
        claims = claims_of(response.json["access_token"])
        assert claims["exp"] == claims_of(subject)["exp"]
        assert response.json["expires_in"] == 300
        clock.shift(300)
        assert introspect(actions, setup.auditor, response.json["access_token"]) == {
            "active": False
        }


@pytest.mark.parametrize(("left", "status"), [(0, 400), (1, 200)])
def test_a_subject_expiring_between_its_check_and_the_signing_is_refused(
    actions: Actions, setup: Setup, monkeypatch: pytest.MonkeyPatch, left: int, status: int
) -> None:
    from tokenserver.oauth import records

    live_access_token = records.live_access_token
    with time_machine.travel(time.time(), tick=False) as clock:
        actions.user("bob")
        subject = actions.token(setup.front, "bob").json["access_token"]
        expires = claims_of(subject)["exp"]

        def checked_then_time_passes(claims: dict[str, Any], kid: str) -> Any:
            live = live_access_token(claims, kid)  # checked while it had 900 s to live
            clock.move_to(expires - left)
            return live

        monkeypatch.setattr(records, "live_access_token", checked_then_time_passes)
        response = exchange(actions, setup.gateway, subject, audience=PHOTOS)
    assert response.status_code == status, response.json
    if status == 400:
        assert response.json == {
            "error": "invalid_request",
            "error_description": "The subject token is invalid, expired, revoked or not for "
            "this client.",
        }
    else:
        assert response.json["expires_in"] == 1
        assert claims_of(response.json["access_token"])["exp"] == expires


def test_a_code_login_token_can_be_exchanged(
    app: Flask, client: FlaskClient, actions: Actions, setup: Setup
) -> None:

    flow = Flow(app, client)
    client_id, secret = flow.register(first_party=True, scope="openid junk:read")
    verifier, challenge = pkce()
    flow.login()
    code = flow.code_for(client_id, challenge, scope="openid junk:read")
    tokens = flow.exchange(client_id, secret, code, verifier)
    assert tokens.status_code == 200, tokens.json
    response = exchange(actions, setup.gateway, tokens.json["access_token"], resource=PHOTOS)
    assert response.status_code == 200, response.json
    claims = verified(actions.client, response.json["access_token"], PHOTOS)
    assert claims["scope"] == "junk:read"  # the gateway is registered for junk:* only
    assert claims["act"] == {"sub": setup.gateway.client_id}


# --- refusals -------------------------------------------------------------------------------


def test_a_client_without_the_grant_is_unauthorized(actions: Actions, setup: Setup) -> None:
    response = exchange(actions, setup.front, setup.subject, resource=MAIL)
    assert refused(response, 400, "unauthorized_client")


def test_a_public_client_cannot_exchange(actions: Actions, setup: Setup) -> None:
    spa = actions.oauth_client("spa", public=True, audiences=(PHOTOS,))
    response = exchange(actions, None, setup.subject, resource=PHOTOS, client_id=spa.client_id)
    assert refused(response, 401, "invalid_client")


def test_no_secret_no_exchange(actions: Actions, setup: Setup) -> None:
    response = exchange(
        actions, None, setup.subject, resource=PHOTOS, client_id=setup.gateway.client_id
    )
    assert refused(response, 401, "invalid_client")


def test_a_scope_wider_than_the_subjects_is_invalid_scope(actions: Actions, setup: Setup) -> None:
    narrow = actions.token(setup.front, scope="junk:read").json["access_token"]
    for scope in ("junk:read junk:write", "junk:write", "openid", "no-such-scope"):
        response = exchange(actions, setup.gateway, narrow, resource=PHOTOS, scope=scope)
        assert refused(response, 400, "invalid_scope"), (scope, response.json)


def test_a_scope_the_exchanging_client_may_not_hold_is_invalid_scope(
    actions: Actions, setup: Setup
) -> None:
    reader = actions.oauth_client(
        "reader", grants=(TOKEN_EXCHANGE,), scope="junk:read", audiences=(DEFAULT, PHOTOS)
    )
    response = exchange(actions, reader, setup.subject, resource=PHOTOS, scope="junk:write")
    assert refused(response, 400, "invalid_scope")
    # Without a scope, it gets what both the subject token and its registration allow.
    response = exchange(actions, reader, setup.subject, resource=PHOTOS)
    assert response.status_code == 200 and response.json["scope"] == "junk:read"


@pytest.mark.parametrize(
    "target",
    [
        {"resource": MAIL},  # the front's audience, not the gateway's
        {"audience": MAIL},
        {"audience": "photos"},
        {"resource": [PHOTOS, MAIL]},  # one bad value spoils the lot
        {"resource": PHOTOS, "audience": MAIL},
        {"resource": PHOTOS + "#frag"},
        {"resource": "/relative"},
    ],
)
def test_a_target_the_client_may_not_ask_for_is_invalid_target(
    actions: Actions, setup: Setup, target: dict[str, Any]
) -> None:
    response = exchange(actions, setup.gateway, setup.subject, **target)
    assert refused(response, 400, "invalid_target"), response.json


def test_a_missing_target_is_invalid_request(actions: Actions, setup: Setup) -> None:
    response = exchange(actions, setup.gateway, setup.subject)
    assert refused(response, 400, "invalid_request")
    assert "audience" in response.json["error_description"]


@pytest.mark.parametrize(
    "params",
    [
        {"subject_token_type": REFRESH_TOKEN},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt"},
        {"subject_token_type": None},
        {"subject_token": None},
        {"requested_token_type": REFRESH_TOKEN},
        {"subject_token_type": [ACCESS_TOKEN, ACCESS_TOKEN]},
        {"actor_token_type": ACCESS_TOKEN},  # a type without a token
    ],
)
def test_malformed_exchange_requests_are_invalid_request(
    actions: Actions, setup: Setup, params: dict[str, Any]
) -> None:
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS, **params)
    assert refused(response, 400, "invalid_request"), response.json


@pytest.mark.parametrize("requested", [ACCESS_TOKEN, ""])
def test_requested_token_type_access_token_or_left_empty_gives_an_access_token(
    actions: Actions, setup: Setup, requested: str
) -> None:
    # RFC 6749 §3.1: a parameter sent without a value is as if it were left out.
    response = exchange(
        actions, setup.gateway, setup.subject, resource=PHOTOS, requested_token_type=requested
    )
    assert response.status_code == 200, response.json
    assert response.json["issued_token_type"] == ACCESS_TOKEN


@pytest.mark.parametrize("blank", ["", " ", "\t "])
def test_a_blank_scope_is_as_if_left_out(actions: Actions, setup: Setup, blank: str) -> None:
    # RFC 6749 §3.2-3.3: no scope value asked for; the subject's, as far as the client may hold.
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS, scope=blank)
    assert response.status_code == 200, response.json
    assert (
        response.json["scope"]
        == exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).json["scope"]
    )


def test_an_empty_resource_or_audience_is_as_if_left_out(actions: Actions, setup: Setup) -> None:
    # RFC 6749 §3.1: an empty value names no target; the other one is the token's.
    response = exchange(actions, setup.gateway, setup.subject, resource="", audience=PHOTOS)
    assert response.status_code == 200, response.json
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS, audience="")
    assert response.status_code == 200, response.json
    # With nothing else, no target is named at all.
    response = exchange(actions, setup.gateway, setup.subject, resource="", audience="")
    assert refused(response, 400, "invalid_request"), response.json


def test_a_repeated_subject_token_is_invalid_request(actions: Actions, setup: Setup) -> None:
    other = actions.token(setup.front).json["access_token"]
    response = exchange(actions, setup.gateway, [setup.subject, other], resource=PHOTOS)
    assert refused(response, 400, "invalid_request")


def _signed(claims: dict[str, Any], key: RSAKey, kid: str | None = None) -> str:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid or key.kid}
    return jwt.encode(header, claims, key, algorithms=["RS256"])


def test_forged_and_foreign_subject_tokens_are_invalid_request(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    # RFC 8693 §2.2.2: a subject or actor token that is invalid for any reason, or unacceptable
    # by policy, MUST be answered invalid_request (not invalid_grant).
    foreign = RSAKey.generate_key(2048, private=True)
    foreign.ensure_kid()
    ours = app.extensions["tokenserver.keyring"].signing_key()
    claims = claims_of(setup.subject)
    header, _, signature = setup.subject.split(".")
    payload = jwt.encode({"alg": "RS256"}, {**claims, "scope": "junk:write"}, ours).split(".")[1]
    forgeries = {
        "foreign key under its own kid": _signed(claims, foreign),
        "foreign key under our kid": _signed(claims, foreign, kid=ours.kid),
        "tampered payload": f"{header}.{payload}.{signature}",
        "never issued": _signed({**claims, "jti": "never-issued"}, ours),
        "garbage": "not-a-token",
        "refresh token": setup.login["refresh_token"],
    }
    for name, token in forgeries.items():
        response = exchange(actions, setup.gateway, token, resource=PHOTOS)
        assert refused(response, 400, "invalid_request"), name


def test_an_expired_subject_token_is_invalid_request(actions: Actions, setup: Setup) -> None:
    with time_machine.travel(time.time(), tick=False) as clock:
        subject = actions.token(setup.front).json["access_token"]
        clock.shift(900)
        response = exchange(actions, setup.gateway, subject, resource=PHOTOS)
        assert refused(response, 400, "invalid_request")


def test_a_revoked_subject_token_is_invalid_request(actions: Actions, setup: Setup) -> None:
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": setup.subject}, auth=setup.front.auth
    )
    assert revoked.status_code == 200
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS)
    assert refused(response, 400, "invalid_request")


def test_a_login_revoked_while_exchanging_stores_nothing_and_is_invalid_request(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    from tokenserver.oauth import records
    from tokenserver.store import clients

    token = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).json["access_token"]
    with app.app_context():
        live = records.live_access_token(claims_of(setup.subject), header_of(setup.subject)["kid"])
        assert live is not None
        gateway = clients.find(setup.gateway.client_id)
        assert gateway is not None
    # The login ends after the subject token checked out, before the new token is stored.
    revoke = {"token": setup.login["refresh_token"]}
    assert (
        actions.client.post("/oauth/revoke", data=revoke, auth=setup.front.auth).status_code == 200
    )
    again = {**claims_of(token), "jti": "exchanged-meanwhile"}
    with app.app_context():
        assert records.record_exchanged(token, again, live.jti or "", gateway) is False
    with app.app_context():
        assert records.live_access_token(again, header_of(token)["kid"]) is None


def test_a_subject_token_revoked_while_exchanging_stores_nothing_and_is_invalid_request(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    from tokenserver.oauth import records
    from tokenserver.store import clients

    token = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).json["access_token"]
    subject_jti = claims_of(setup.subject)["jti"]
    with app.app_context():
        gateway = clients.find(setup.gateway.client_id)
        assert gateway is not None
        stored = {**claims_of(token), "jti": "exchanged-before"}
        assert records.record_exchanged(token, stored, subject_jti, gateway)  # subject live
        assert records.live_access_token(stored, header_of(token)["kid"]) is not None
    # The subject token (not its login) is revoked after it checked out, before the insert.
    revoke = {"token": setup.subject}
    assert (
        actions.client.post("/oauth/revoke", data=revoke, auth=setup.front.auth).status_code == 200
    )
    again = {**claims_of(token), "jti": "exchanged-meanwhile"}
    with app.app_context():
        assert records.record_exchanged(token, again, subject_jti, gateway) is False
    with app.app_context():
        assert records.live_access_token(again, header_of(token)["kid"]) is None
        assert (
            records.live_access_token(stored, header_of(token)["kid"]) is None
        )  # revoked with its subject token


def test_a_disabled_users_token_is_invalid_request(
    actions: Actions, setup: Setup, runner: FlaskCliRunner
) -> None:
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS)
    assert refused(response, 400, "invalid_request")


def test_a_token_aimed_at_a_service_the_client_does_not_serve_is_invalid_request(
    actions: Actions, setup: Setup
) -> None:
    # Alice's token for the mail service reached the gateway: the gateway may not swap it.
    for_mail = actions.token(setup.front, resource=MAIL).json["access_token"]
    response = exchange(actions, setup.gateway, for_mail, resource=PHOTOS)
    assert refused(response, 400, "invalid_request")
    # Said as for a token that is not alive: the refusal tells nothing of the token's state.
    assert response.json == exchange(actions, setup.gateway, "not-a-token", resource=PHOTOS).json
    # The mail service itself may.
    mail = actions.oauth_client("mail", grants=(TOKEN_EXCHANGE,), audiences=(MAIL, PHOTOS))
    assert exchange(actions, mail, for_mail, resource=PHOTOS).status_code == 200


def test_a_foreign_token_is_refused_alike_alive_or_revoked(actions: Actions, setup: Setup) -> None:
    # The gateway serves neither MAIL nor the tokens aimed at it: whether such a token is still
    # alive is none of its business, as subject or as actor.
    live = actions.token(setup.front, resource=MAIL).json["access_token"]
    dead = actions.token(setup.front, resource=MAIL).json["access_token"]
    revoke = actions.client.post("/oauth/revoke", data={"token": dead}, auth=setup.front.auth)
    assert revoke.status_code == 200
    assert introspect(actions, setup.auditor, live)["active"] is True
    assert introspect(actions, setup.auditor, dead) == {"active": False}
    as_subject = [exchange(actions, setup.gateway, t, resource=PHOTOS) for t in (live, dead)]
    assert refused(as_subject[0], 400, "invalid_request")
    assert as_subject[0].json == as_subject[1].json
    as_actor = [
        exchange(
            actions,
            setup.gateway,
            setup.subject,
            resource=PHOTOS,
            actor_token=token,
            actor_token_type=ACCESS_TOKEN,
        )
        for token in (live, dead)
    ]
    assert refused(as_actor[0], 400, "invalid_request")
    assert as_actor[0].json == as_actor[1].json


def test_every_refused_subject_token_gets_one_description(
    actions: Actions, setup: Setup, runner: FlaskCliRunner
) -> None:
    machine = actions.oauth_client("machine", grants=("client_credentials",), audiences=(PHOTOS,))
    own = actions.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "resource": PHOTOS},
        auth=machine.auth,
    ).json["access_token"]
    revoked = actions.token(setup.front).json["access_token"]
    actions.client.post("/oauth/revoke", data={"token": revoked}, auth=setup.front.auth)
    for_mail = actions.token(setup.front, resource=MAIL).json["access_token"]
    refusals = {
        "garbage": "not-a-token",
        "a client's own token": own,
        "revoked": revoked,
        "aimed elsewhere": for_mail,
    }
    descriptions = set()
    for name, token in refusals.items():
        response = exchange(actions, setup.gateway, token, resource=PHOTOS)
        assert refused(response, 400, "invalid_request"), name
        descriptions.add(response.json["error_description"])
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    disabled = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS)
    descriptions.add(disabled.json["error_description"])
    assert len(descriptions) == 1, descriptions


def test_a_clients_own_token_is_not_a_subject(actions: Actions, setup: Setup) -> None:
    machine = actions.oauth_client("machine", grants=("client_credentials",))
    own = actions.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=machine.auth
    ).json["access_token"]
    response = exchange(actions, setup.gateway, own, resource=PHOTOS)
    assert refused(response, 400, "invalid_request")


# --- dying with the subject -----------------------------------------------------------------


def test_revoking_the_subjects_login_kills_the_exchanged_token(
    actions: Actions, setup: Setup
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 200
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": setup.login["refresh_token"]}, auth=setup.front.auth
    )
    assert revoked.status_code == 200
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 401
    assert introspect(actions, setup.auditor, token) == {"active": False}


def test_revoking_the_subject_token_kills_the_exchanged_token_and_the_login_goes_on(
    actions: Actions, setup: Setup
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 200
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": setup.subject}, auth=setup.front.auth
    )
    assert revoked.status_code == 200
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 401
    assert introspect(actions, setup.auditor, token) == {"active": False}
    # Only that token's line ends: the login refreshes, and what it issues can be exchanged.
    refreshed = actions.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": setup.login["refresh_token"]},
        auth=setup.front.auth,
    )
    assert refreshed.status_code == 200, refreshed.json
    fresh = refreshed.json["access_token"]
    assert exchange(actions, setup.gateway, fresh, audience=DEFAULT).status_code == 200


def test_revoking_an_exchanged_token_kills_what_was_exchanged_from_it_down_the_chain(
    actions: Actions, setup: Setup
) -> None:
    relay = actions.oauth_client("relay", grants=(TOKEN_EXCHANGE,), audiences=(DEFAULT,))
    sibling = exchange(actions, relay, setup.subject, audience=DEFAULT).json["access_token"]
    chain = [setup.subject]
    for _ in range(4):  # as deep as exchanges nest
        response = exchange(actions, relay, chain[-1], audience=DEFAULT)
        assert response.status_code == 200, response.json
        chain.append(response.json["access_token"])
    revoked = actions.client.post("/oauth/revoke", data={"token": chain[1]}, auth=relay.auth)
    assert revoked.status_code == 200
    assert [introspect(actions, setup.auditor, token)["active"] for token in chain] == [
        True,  # what it was exchanged from lives on
        False,
        False,
        False,
        False,
    ]
    assert introspect(actions, setup.auditor, sibling)["active"] is True  # not from it


def _revoking_on_a_thread(app: Flask, token: str, what: str = "token") -> threading.Thread:
    """Revoke the access `token` (as RFC 7009 revocation does), or its signing key (as `keys
    revoke` does), on a thread of its own."""
    from tokenserver.extensions import db
    from tokenserver.keys import revoke as revoke_key
    from tokenserver.keywrap import KeyWrapper
    from tokenserver.store.tokens import revoking

    def revoke() -> None:
        with app.app_context():
            if what == "token":
                revoking.revoke_access_token(claims_of(token)["jti"])
            else:
                revoke_key(db.engine, KeyWrapper(), pyjwt.get_unverified_header(token)["kid"])

    return threading.Thread(target=revoke)


def _postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time")


@pytest.mark.parametrize("what", ["token", "signing key"])
def test_revoking_a_subject_token_waits_for_its_exchange_under_way_and_kills_its_token(
    app: Flask,
    actions: Actions,
    setup: Setup,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    # The exchange has stored its token, not yet committed, when the subject token (or its
    # signing key) is revoked: the revocation waits for it, then sees that token and revokes
    # it too.
    _postgres_only(database_url)
    from tokenserver.store.tokens import issuing as token_issuing

    holding, release = threading.Event(), threading.Event()
    issuing = token_issuing._issuing

    def held(write: Any) -> bool:
        def stored_then_held(conn: Any) -> bool:
            stored = bool(write(conn))
            holding.set()
            release.wait(30)
            return stored

        return issuing(stored_then_held)

    monkeypatch.setattr(token_issuing, "_issuing", held)
    answers: list[Any] = []
    other = app.test_client()
    exchanging = threading.Thread(
        target=lambda: answers.append(
            exchange(Actions(app, other), setup.gateway, setup.subject, audience=DEFAULT)
        )
    )
    exchanging.start()
    assert holding.wait(30)
    revoking = _revoking_on_a_thread(app, setup.subject, what)
    revoking.start()
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            until_a_backend_waits_for_a_lock(conn, revoking)
    finally:
        release.set()
        exchanging.join()
        revoking.join()
        engine.dispose()
    assert answers[0].status_code == 200, answers[0].json  # it came first...
    token = answers[0].json["access_token"]
    assert introspect(actions, setup.auditor, token) == {"active": False}  # ...and died


def test_an_exchange_waits_for_its_subject_tokens_revocation_under_way_and_stores_nothing(
    app: Flask,
    actions: Actions,
    setup: Setup,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other way round: the subject token is revoked, not yet committed, when the exchange
    # (which found it live) stores its token: the exchange waits, then finds it revoked.
    _postgres_only(database_url)
    from tokenserver.store.tokens import revoking as token_revoking

    holding, release = threading.Event(), threading.Event()
    walking = token_revoking._revoke_exchanged

    def held(conn: Any, jtis: list[str], now: Any) -> None:
        holding.set()
        release.wait(30)
        walking(conn, jtis, now)

    monkeypatch.setattr(token_revoking, "_revoke_exchanged", held)
    revoking = _revoking_on_a_thread(app, setup.subject)
    revoking.start()
    assert holding.wait(30)
    answers: list[Any] = []
    other = app.test_client()
    exchanging = threading.Thread(
        target=lambda: answers.append(
            exchange(Actions(app, other), setup.gateway, setup.subject, audience=DEFAULT)
        )
    )
    exchanging.start()
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            until_a_backend_waits_for_a_lock(conn, exchanging)
    finally:
        release.set()
        revoking.join()
        exchanging.join()
        engine.dispose()
    assert refused(answers[0], 400, "invalid_request"), answers[0].json


def test_revoking_the_subject_tokens_signing_key_kills_the_token_exchanged_from_it(
    app: Flask, actions: Actions, setup: Setup, make_app: Any
) -> None:
    from tokenserver.extensions import db
    from tokenserver.keys import revoke, rotate
    from tokenserver.keywrap import KeyWrapper

    subject_kid = pyjwt.get_unverified_header(setup.subject)["kid"]
    with app.app_context():
        rotation = rotate(db.engine, KeyWrapper(), 0, now=True)
    assert rotation is not None
    elsewhere = make_app()  # a worker that signs with the new key already
    relay = Actions(elsewhere, elsewhere.test_client())
    first = exchange(relay, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    second = exchange(relay, setup.gateway, first, audience=DEFAULT).json["access_token"]
    assert {pyjwt.get_unverified_header(t)["kid"] for t in (first, second)} == {rotation.kid}
    sibling = relay.token(setup.front).json["access_token"]  # signed with the new key
    from_sibling = exchange(relay, setup.gateway, sibling, audience=DEFAULT).json["access_token"]
    with app.app_context():
        revoke(db.engine, KeyWrapper(), subject_kid)
    assert introspect(actions, setup.auditor, first) == {"active": False}
    assert introspect(actions, setup.auditor, second) == {"active": False}
    assert introspect(actions, setup.auditor, from_sibling)["active"] is True


def test_a_subject_tokens_key_revoked_while_exchanging_stores_nothing(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    from tokenserver.extensions import db
    from tokenserver.keys import revoke
    from tokenserver.keywrap import KeyWrapper
    from tokenserver.oauth import records
    from tokenserver.store import clients

    token = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).json["access_token"]
    with app.app_context():
        gateway = clients.find(setup.gateway.client_id)
        assert gateway is not None
        # The subject token checked out; its key is revoked before the new token is stored.
        revoke(db.engine, KeyWrapper(), pyjwt.get_unverified_header(setup.subject)["kid"])
    again = {**claims_of(token), "jti": "exchanged-meanwhile"}
    with app.app_context():
        assert (
            records.record_exchanged(token, again, claims_of(setup.subject)["jti"], gateway)
            is False
        )
    with app.app_context():
        assert tokens_stored(again["jti"]) == 0


def tokens_stored(jti: str) -> int:
    """How many records carry this `jti` (within an app context)."""
    from sqlalchemy import func, select

    from tokenserver.extensions import db
    from tokenserver.models import TokenRecord

    return int(db.session.scalar(select(func.count()).where(TokenRecord.jti == jti)) or 0)


def test_disabling_the_user_kills_the_exchanged_token_for_good(
    actions: Actions, setup: Setup, runner: FlaskCliRunner
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    runner.invoke(args=["users", "disable", "alice"])
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 401
    runner.invoke(args=["users", "enable", "alice"])
    assert introspect(actions, setup.auditor, token) == {"active": False}


def test_the_exchanging_client_may_revoke_its_token_and_the_subject_lives_on(
    actions: Actions, setup: Setup
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    # The login's client cannot revoke a token it was not issued (RFC 7009 §2.1: 200, no-op).
    actions.client.post("/oauth/revoke", data={"token": token}, auth=setup.front.auth)
    assert introspect(actions, setup.auditor, token)["active"] is True
    actions.client.post("/oauth/revoke", data={"token": token}, auth=setup.gateway.auth)
    assert introspect(actions, setup.auditor, token) == {"active": False}
    assert introspect(actions, setup.auditor, setup.subject)["active"] is True


def test_deleting_the_exchanging_client_kills_its_tokens(
    actions: Actions, setup: Setup, runner: FlaskCliRunner
) -> None:
    token = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    assert runner.invoke(args=["clients", "delete", setup.gateway.client_id]).exit_code == 0
    assert introspect(actions, setup.auditor, token) == {"active": False}
    assert introspect(actions, setup.auditor, setup.subject)["active"] is True


def test_deleting_a_client_in_the_middle_of_a_chain_kills_what_was_exchanged_from_its_tokens(
    actions: Actions, setup: Setup, runner: FlaskCliRunner
) -> None:
    relay = actions.oauth_client("relay", grants=(TOKEN_EXCHANGE,), audiences=(DEFAULT,))
    first = exchange(actions, setup.gateway, setup.subject, audience=DEFAULT).json["access_token"]
    second = exchange(actions, relay, first, audience=DEFAULT).json["access_token"]
    assert runner.invoke(args=["clients", "delete", setup.gateway.client_id]).exit_code == 0
    # The record of `first` went with its client: revoking the subject token no longer walks
    # down to `second`, so the deletion must not leave it alive.
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": setup.subject}, auth=setup.front.auth
    )
    assert revoked.status_code == 200
    assert introspect(actions, setup.auditor, second) == {"active": False}


# --- actors ---------------------------------------------------------------------------------


def test_an_actor_token_and_a_second_exchange_nest_the_actors(
    actions: Actions, setup: Setup
) -> None:
    actions.user("bob")
    bob = actions.token(setup.front, "bob").json["access_token"]  # aimed at DEFAULT
    first = exchange(
        actions,
        setup.gateway,
        setup.subject,
        resource=PHOTOS,
        actor_token=bob,
        actor_token_type=ACCESS_TOKEN,
    )
    assert first.status_code == 200, first.json
    bob_id = claims_of(bob)["sub"]
    gateway_act = {"sub": setup.gateway.client_id, "act": {"sub": bob_id}}
    assert claims_of(first.json["access_token"])["act"] == gateway_act
    # The photos service, holding that token, swaps it for one aimed at the printer.
    photos = actions.oauth_client("photos", grants=(TOKEN_EXCHANGE,), audiences=(PHOTOS, PRINT))
    second = exchange(actions, photos, first.json["access_token"], resource=PRINT)
    assert second.status_code == 200, second.json
    claims = verified(actions.client, second.json["access_token"], PRINT)
    assert claims["act"] == {"sub": photos.client_id, "act": gateway_act}
    assert claims["sub"] == claims_of(setup.subject)["sub"]
    assert introspect(actions, setup.auditor, second.json["access_token"])["act"] == claims["act"]
    # All three die with alice's login.
    actions.client.post(
        "/oauth/revoke", data={"token": setup.login["refresh_token"]}, auth=setup.front.auth
    )
    for token in (first.json["access_token"], second.json["access_token"]):
        assert introspect(actions, setup.auditor, token) == {"active": False}


def test_the_clients_own_token_as_actor_adds_no_second_self(actions: Actions, setup: Setup) -> None:
    # The gateway may also hold client credentials, for a token naming itself.
    gateway = actions.oauth_client(
        "gateway2", grants=(TOKEN_EXCHANGE, "client_credentials"), audiences=(DEFAULT, PHOTOS)
    )
    own = actions.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=gateway.auth
    ).json["access_token"]
    response = exchange(
        actions,
        gateway,
        setup.subject,
        resource=PHOTOS,
        actor_token=own,
        actor_token_type=ACCESS_TOKEN,
    )
    assert response.status_code == 200, response.json
    assert claims_of(response.json["access_token"])["act"] == {"sub": gateway.client_id}


def test_an_invalid_or_unrelated_actor_token_is_invalid_request(
    actions: Actions, setup: Setup
) -> None:
    for_mail = actions.token(setup.front, resource=MAIL).json["access_token"]
    for actor in ("not-a-token", for_mail):
        response = exchange(
            actions,
            setup.gateway,
            setup.subject,
            resource=PHOTOS,
            actor_token=actor,
            actor_token_type=ACCESS_TOKEN,
        )
        assert refused(response, 400, "invalid_request"), actor
    response = exchange(
        actions, setup.gateway, setup.subject, resource=PHOTOS, actor_token=for_mail
    )
    assert refused(response, 400, "invalid_request")  # actor_token_type is required with it


def test_exchanges_cannot_nest_without_end(actions: Actions, setup: Setup) -> None:
    relay = actions.oauth_client("relay", grants=(TOKEN_EXCHANGE,), audiences=(DEFAULT,))
    token = setup.subject
    for _ in range(4):
        response = exchange(actions, relay, token, audience=DEFAULT)
        assert response.status_code == 200, response.json
        token = response.json["access_token"]
    assert refused(exchange(actions, relay, token, audience=DEFAULT), 400, "invalid_request")


# --- the rest of the service ------------------------------------------------------------------


def test_metadata_lists_the_grant(client: FlaskClient) -> None:
    metadata = client.get("/.well-known/oauth-authorization-server").json
    assert TOKEN_EXCHANGE in metadata["grant_types_supported"]


def test_each_exchange_is_audited_without_the_tokens(
    actions: Actions, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenserver.audit")
    response = exchange(actions, setup.gateway, setup.subject, resource=PHOTOS)
    token = response.json["access_token"]
    [record] = [r for r in caplog.records if r.getMessage() == "token.exchanged"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["client_id"] == setup.gateway.client_id
    assert fields["username"] == "alice"
    assert fields["jti"] == claims_of(token)["jti"]
    assert fields["subject_jti"] == claims_of(setup.subject)["jti"]
    assert fields["subject_client_id"] == setup.front.client_id
    assert fields["audience"] == PHOTOS
    assert fields["act"] == {"sub": setup.gateway.client_id}
    logged = json.dumps(fields)
    assert token not in logged and setup.subject not in logged


def test_cli_registers_an_exchanging_client(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=["clients", "create", "gw", "--grant", TOKEN_EXCHANGE, "--audience", PHOTOS, "--json"]
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert made["grant_types"] == [TOKEN_EXCHANGE] and made["client_secret"]
    public = runner.invoke(
        args=["clients", "create", "p", "--public", "--grant", TOKEN_EXCHANGE, "--audience", PHOTOS]
    )
    assert public.exit_code != 0 and "public client" in public.output
    aimless = runner.invoke(args=["clients", "create", "a", "--grant", TOKEN_EXCHANGE])
    assert aimless.exit_code != 0 and "--audience" in aimless.output


def test_authlib_client_exchanges_against_gunicorn(
    live_server: LiveServer, actions: Actions, setup: Setup
) -> None:
    session = OAuth2Session(
        setup.gateway.client_id,
        setup.gateway.secret,
        token_endpoint=f"{live_server.url}/oauth/token",
        token_endpoint_auth_method="client_secret_basic",
    )
    token = session.fetch_token(
        grant_type=TOKEN_EXCHANGE,
        subject_token=setup.subject,
        subject_token_type=ACCESS_TOKEN,
        audience=DEFAULT,
        scope="junk:read",
    )
    assert token["issued_token_type"] == ACCESS_TOKEN and "refresh_token" not in token
    me = session.get(f"{live_server.url}/users/me", timeout=10)
    assert me.status_code == 200 and me.json()["username"] == "alice"
    wider = requests.post(
        f"{live_server.url}/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": token["access_token"],
            "subject_token_type": ACCESS_TOKEN,
            "audience": DEFAULT,
            "scope": "junk:read junk:write",
        },
        auth=setup.gateway.auth,
        timeout=10,
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_a_sender_constrained_subject_token_is_invalid_request(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    # The real token's claims and record, bound to a key (RFC 9449 cnf) by our own signature.
    ours = app.extensions["tokenserver.keyring"].signing_key()
    thumbprint = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    bound = _signed({**claims_of(setup.subject), "cnf": {"jkt": thumbprint}}, ours)
    assert introspect(actions, setup.auditor, bound)["active"] is True  # a live token of ours
    response = exchange(actions, setup.gateway, bound, resource=PHOTOS)
    assert refused(response, 400, "invalid_request")
    assert response.json == exchange(actions, setup.gateway, "not-a-token", resource=PHOTOS).json


def test_a_sender_constrained_actor_token_is_invalid_request(
    actions: Actions, setup: Setup
) -> None:
    mail = actions.oauth_client("mail", grants=(TOKEN_EXCHANGE,), audiences=(MAIL, PHOTOS))
    subject = actions.token(setup.front, resource=MAIL).json["access_token"]
    password = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    bound = actions.client.post(
        "/oauth/token",
        data={**password, "resource": MAIL},
        auth=setup.front.auth,
        headers={"DPoP": Prover().proof("POST", f"{DEFAULT}/oauth/token")},
    ).json["access_token"]
    assert "cnf" in claims_of(bound)  # bound to a key the exchanging client never proves
    as_actor = {"actor_token": bound, "actor_token_type": ACCESS_TOKEN}
    response = exchange(actions, mail, subject, resource=PHOTOS, **as_actor)
    assert refused(response, 400, "invalid_request"), response.json
    # The same token unbound would do: only the binding refuses it.
    unbound = actions.token(setup.front, resource=MAIL).json["access_token"]
    as_actor = {"actor_token": unbound, "actor_token_type": ACCESS_TOKEN}
    assert exchange(actions, mail, subject, resource=PHOTOS, **as_actor).status_code == 200


def test_an_exchange_leaves_no_actor_on_later_tokens_of_the_same_context(
    app: Flask, actions: Actions, setup: Setup
) -> None:
    with app.app_context():  # one context around both requests, as some callers hold one
        assert exchange(actions, setup.gateway, setup.subject, resource=PHOTOS).status_code == 200
        later = actions.token(setup.front)
    assert later.status_code == 200
    claims = claims_of(later.json["access_token"])
    assert "act" not in claims and claims["exp"] - claims["iat"] == 900
