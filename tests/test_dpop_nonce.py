"""DPoP server-provided nonces (RFC 9449 §8, §9) with TOKENSERVER_DPOP_NONCE on: a proof without
a fresh nonce of ours is refused with one, and nothing is spent until it carries it."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tokenserver.browser_models import PushedAuthorization
from tokenserver.extensions import db
from tokenserver.keys import rotate
from tokenserver.keywrap import KeyWrapper
from tokenserver.oauth import nonces

from .conftest import PASSWORD, Actions, LiveServer, RegisteredClient
from .helpers import REDIRECT, Flow, Prover, authorization_request, b64url, pkce

ISSUER = "http://localhost:8000"  # the test settings' issuer: proofs name it, not the hop
TOKEN_URL = f"{ISSUER}/oauth/token"
PAR_URL = f"{ISSUER}/oauth/par"
PASSWORD_GRANT = {"grant_type": "password", "username": "alice", "password": PASSWORD}
SCOPE = "openid profile junk:read junk:write"


@pytest.fixture
def app(make_app: Any) -> Flask:
    """The application under test, requiring nonces."""
    return make_app(dpop_nonce=True)


@pytest.fixture
def prover() -> Prover:
    return Prover()


@pytest.fixture
def app_client(actions: Actions) -> RegisteredClient:
    """Alice, and a confidential client with the password and refresh grants (and openid)."""
    actions.user("alice")
    return actions.oauth_client("app", scope=SCOPE)


def _token(client: FlaskClient, caller: RegisteredClient, proof: str | None, **data: str) -> Any:
    data = data or PASSWORD_GRANT
    headers = {"DPoP": proof} if proof else {}
    if caller.secret is None:
        return client.post(
            "/oauth/token", data={**data, "client_id": caller.client_id}, headers=headers
        )
    return client.post("/oauth/token", data=data, headers=headers, auth=caller.auth)


def _with_nonce(nonce: str, **claims: Any) -> dict[str, Any]:
    return {"claims": {"nonce": nonce, **claims}}


def _told_to_use_a_nonce(response: Any) -> str:
    """Assert a token endpoint's RFC 9449 §8 refusal; the fresh nonce it carries."""
    assert response.status_code == 400, response.json
    assert response.json["error"] == "use_dpop_nonce"
    assert "nonce" in response.json["error_description"]
    assert "access_token" not in response.json
    nonce: str = response.headers["DPoP-Nonce"]
    assert nonce
    return nonce


def _nonce(client: FlaskClient, caller: RegisteredClient, prover: Prover) -> str:
    """The nonce a client learns from its first, refused, token request."""
    return _told_to_use_a_nonce(_token(client, caller, prover.proof("POST", TOKEN_URL)))


def _bound_token(client: FlaskClient, caller: RegisteredClient, prover: Prover) -> Any:
    """Tokens bound to `prover`'s key, fetched as a client does: refused once, then retried."""
    nonce = _nonce(client, caller, prover)
    response = _token(client, caller, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    assert response.status_code == 200, response.json
    assert response.json["token_type"] == "DPoP"
    return response


# --- the token endpoint (RFC 9449 §8) -------------------------------------------------------


def test_token_request_without_a_nonce_is_told_to_use_one(
    app: Flask, client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL))
    nonce = _told_to_use_a_nonce(response)
    assert response.headers["Cache-Control"] == "no-store"
    with app.app_context():
        assert nonces.is_fresh(nonce)


def test_retry_with_the_nonce_gets_tokens_and_the_next_nonce(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    issued = _bound_token(client, app_client, prover)
    assert issued.headers["DPoP-Nonce"]  # RFC 9449 §8.2: the nonce for the next request


def _forged_mac(good: str) -> str:
    mac, _, kid = good.partition(".")
    return f"{mac[:-4]}{'AAAA' if mac[-4:] != 'AAAA' else 'BBBB'}.{kid}"


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda good: "", id="empty"),
        pytest.param(lambda good: 12345, id="not-a-string"),
        pytest.param(lambda good: b64url(secrets.token_bytes(24)), id="random"),
        pytest.param(lambda good: _forged_mac(good), id="mac"),
        pytest.param(lambda good: good.partition(".")[0], id="no-kid"),
        pytest.param(lambda good: good.partition(".")[0] + "." + "A" * 43, id="unknown-kid"),
        pytest.param(lambda good: good + "A", id="longer"),
        pytest.param(lambda good: good[:11] + "é" + good[12:], id="not-ascii"),
    ],
)
def test_token_request_with_a_forged_nonce_is_refused(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover, forged: Any
) -> None:
    good = _nonce(client, app_client, prover)
    proof = prover.proof("POST", TOKEN_URL, claims={"nonce": forged(good)})
    fresh = _told_to_use_a_nonce(_token(client, app_client, proof))
    # The nonce it is told to use works: the forgery was refused for itself.
    retry = _token(client, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(fresh)))
    assert retry.status_code == 200


def test_a_nonce_is_good_in_its_window_and_the_next_only(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover, frozen: Any
) -> None:
    nonce = _nonce(client, app_client, prover)
    frozen.shift(nonces.WINDOW)  # the next window, wherever in its own the nonce was made
    later = _token(client, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    assert later.status_code == 200, later.json
    frozen.shift(nonces.WINDOW)  # two windows on: stale
    stale = _token(client, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    fresh = _told_to_use_a_nonce(stale)
    assert fresh != nonce


@pytest.mark.parametrize(
    ("windows", "accepted"), [(0, True), (-1, True), (-2, False), (-10, False), (1, False)]
)
def test_only_nonces_of_this_window_and_the_last_are_taken(
    app: Flask,
    client: FlaskClient,
    app_client: RegisteredClient,
    prover: Prover,
    windows: int,
    accepted: bool,
    frozen: Any,
) -> None:
    # The clock stands still: a window that ended between making the nonce and checking it
    # would move "this window" and "the last" by one.
    with app.app_context():
        # A genuine MAC for that window: only its time is wrong (or right).
        nonce = nonces.issue(time.time() + windows * nonces.WINDOW)
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    if accepted:
        assert response.status_code == 200, response.json
    else:
        _told_to_use_a_nonce(response)


def test_a_proof_refused_for_its_nonce_leaves_its_jti_unspent(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    jti = secrets.token_urlsafe(16)
    refused = _token(client, app_client, prover.proof("POST", TOKEN_URL, claims={"jti": jti}))
    nonce = _told_to_use_a_nonce(refused)
    proof = prover.proof("POST", TOKEN_URL, **_with_nonce(nonce, jti=jti))
    assert _token(client, app_client, proof).status_code == 200  # the jti was still fresh
    replayed = _token(client, app_client, proof)
    assert replayed.status_code == 400
    assert replayed.json["error"] == "invalid_dpop_proof"  # ...and is spent now


def test_a_refused_refresh_does_not_rotate_the_refresh_token(
    client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    phone = actions.oauth_client("phone", public=True)
    issued = _bound_token(client, phone, prover).json
    refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    with client.application.app_context():
        stale = nonces.issue(time.time() - 3 * nonces.WINDOW)
    for claims in ({}, _with_nonce(stale)):
        refused = _token(client, phone, prover.proof("POST", TOKEN_URL, **claims), **refresh)
        nonce = _told_to_use_a_nonce(refused)
    renewed = _token(
        client, phone, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)), **refresh
    )
    assert renewed.status_code == 200, renewed.json  # not spent, family not revoked
    assert renewed.json["refresh_token"] != issued["refresh_token"]
    # Rotated now, on success only: the old one is spent.
    again = _token(client, phone, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)), **refresh)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"


def test_a_refused_code_exchange_leaves_the_code_unspent(
    app: Flask, client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    flow = Flow(app, client)
    client_id, _ = flow.register(public=True, first_party=True)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    refused = flow.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
        },
        headers={"DPoP": prover.proof("POST", TOKEN_URL)},
    )
    nonce = _told_to_use_a_nonce(refused)
    exchanged = flow.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
        },
        headers={"DPoP": prover.proof("POST", TOKEN_URL, **_with_nonce(nonce))},
    )
    assert exchanged.status_code == 200, exchanged.json
    assert exchanged.json["token_type"] == "DPoP"


# --- pushed authorization requests ------------------------------------------------------------


def _stored(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(PushedAuthorization)))


@pytest.mark.parametrize("sent", ["none", "forged"])
def test_push_without_a_fresh_nonce_is_told_to_use_one(
    app: Flask, client: FlaskClient, actions: Actions, prover: Prover, sent: str
) -> None:
    actions.user("alice")
    client_id, secret = Flow(app, client).register()
    assert secret is not None
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge)
    jti = secrets.token_urlsafe(16)
    claims = {"jti": jti} | ({"nonce": b64url(secrets.token_bytes(24))} if sent == "forged" else {})
    proof = prover.proof("POST", PAR_URL, claims=claims)
    refused = client.post(
        "/oauth/par", data=body, headers={"DPoP": proof}, auth=(client_id, secret)
    )
    nonce = _told_to_use_a_nonce(refused)
    assert _stored(app) == 0
    # The same jti, now with the nonce: it was not spent by the refusal.
    retry = prover.proof("POST", PAR_URL, **_with_nonce(nonce, jti=jti))
    pushed = client.post("/oauth/par", data=body, headers={"DPoP": retry}, auth=(client_id, secret))
    assert pushed.status_code == 201, pushed.json
    assert pushed.headers["DPoP-Nonce"]
    assert _stored(app) == 1


def test_nonce_refusals_do_not_spend_the_token_failure_budget(
    make_app: Any, app_client: RegisteredClient
) -> None:
    limited = make_app(dpop_nonce=True, ratelimit_enabled=True, ratelimit_token_failures="3/minute")
    client = limited.test_client()
    # More clients behind one address than the budget, each starting without a nonce.
    for _ in range(5):
        _bound_token(client, app_client, Prover())
    # Real failures still count.
    wrong = {**PASSWORD_GRANT, "password": "wrong"}
    answers = [_token(client, app_client, None, **wrong).status_code for _ in range(4)]
    assert answers == [400, 400, 400, 429]


# --- resources (RFC 9449 §9) -------------------------------------------------------------------


def _refused_at_resource(response: Any) -> str:
    """Assert a resource's RFC 9449 §9 refusal; the fresh nonce it carries."""
    assert response.status_code == 401
    assert response.json["error"] == "use_dpop_nonce"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'error="use_dpop_nonce"' in challenge and 'algs="ES256 ' in challenge
    nonce: str = response.headers["DPoP-Nonce"]
    assert nonce
    return nonce


def _get(client: FlaskClient, path: str, token: str, proof: str) -> Any:
    return client.get(path, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


@pytest.mark.parametrize("path", ["/junk", "/users/me", "/oauth/userinfo"])
@pytest.mark.parametrize("sent", ["none", "forged", "stale"])
def test_resource_request_without_a_fresh_nonce_is_told_to_use_one(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover, path: str, sent: str
) -> None:
    token = _bound_token(client, app_client, prover).json["access_token"]
    url = ISSUER + path
    with client.application.app_context():
        nonce = {
            "none": None,
            "forged": b64url(secrets.token_bytes(24)),
            "stale": nonces.issue(time.time() - 2 * nonces.WINDOW),
        }[sent]
    jti = secrets.token_urlsafe(16)
    claims = {"jti": jti} | ({"nonce": nonce} if nonce else {})
    fresh = _refused_at_resource(
        _get(client, path, token, prover.proof("GET", url, token, claims=claims))
    )
    # The same jti with the nonce it was given: nothing was spent by the refusal.
    retry = prover.proof("GET", url, token, **_with_nonce(fresh, jti=jti))
    answered = _get(client, path, token, retry)
    assert answered.status_code == 200, answered.json
    assert answered.headers["DPoP-Nonce"]


def test_a_nonce_from_a_token_response_serves_the_resource_too(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    issued = _bound_token(client, app_client, prover)
    token, nonce = issued.json["access_token"], issued.headers["DPoP-Nonce"]
    proof = prover.proof("GET", f"{ISSUER}/junk", token, **_with_nonce(nonce))
    assert _get(client, "/junk", token, proof).status_code == 200  # no second refusal


def test_a_bearer_request_carries_no_nonce(
    client: FlaskClient, app_client: RegisteredClient
) -> None:
    issued = _token(client, app_client, None)
    assert issued.status_code == 200 and issued.json["token_type"] == "Bearer"
    assert "DPoP-Nonce" not in issued.headers
    me = client.get("/users/me", headers={"Authorization": f"Bearer {issued.json['access_token']}"})
    assert me.status_code == 200 and "DPoP-Nonce" not in me.headers


def test_a_page_may_read_the_nonce(
    app: Flask, client: FlaskClient, actions: Actions, prover: Prover
) -> None:
    actions.user("alice")
    client_id, secret = Flow(app, client).register("https://spa.example.com/callback")
    assert secret is not None
    origin = "https://spa.example.com"
    refused = client.post(
        "/oauth/token",
        data=PASSWORD_GRANT,
        headers={"DPoP": prover.proof("POST", TOKEN_URL), "Origin": origin},
        auth=(client_id, secret),
    )
    _told_to_use_a_nonce(refused)
    assert refused.headers["Access-Control-Allow-Origin"] == origin
    exposed = {h.strip() for h in refused.headers["Access-Control-Expose-Headers"].split(",")}
    assert "DPoP-Nonce" in exposed


# --- across instances, keys and settings ---------------------------------------------------------


def test_a_nonce_from_one_instance_is_good_at_another(
    make_app: Any, client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    other = make_app(dpop_nonce=True).test_client()  # another worker or node, same database
    nonce = _nonce(client, app_client, prover)
    there = _token(other, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    assert there.status_code == 200, there.json
    back = there.headers["DPoP-Nonce"]
    here = _token(client, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(back)))
    assert here.status_code == 200, here.json


def _requests_in_turn(
    workers: list[FlaskClient], caller: RegisteredClient, prover: Prover, nonce: str
) -> list[int]:
    """Token requests sent to each worker in turn, each with the last nonce seen, retried once
    when told to use another; how many retries each request took."""
    retries = []
    for worker in workers:
        answer = _token(worker, caller, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
        retried = 0
        if answer.status_code == 400 and answer.json["error"] == "use_dpop_nonce":
            nonce, retried = answer.headers["DPoP-Nonce"], 1
            answer = _token(worker, caller, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
        assert answer.status_code == 200, answer.json
        nonce = answer.headers["DPoP-Nonce"]
        retries.append(retried)
    return retries


def test_nonces_move_to_a_published_next_key_with_no_retry(
    make_app: Any, app_client: RegisteredClient, prover: Prover
) -> None:
    cached = make_app(dpop_nonce=True, key_cache_seconds=300)
    through = cached.test_client()
    before = _nonce(through, app_client, prover)  # it has loaded the current key, for long
    with cached.app_context():
        rotation = rotate(db.engine, KeyWrapper(), 3600)  # next: signs in an hour
    assert rotation is not None and not before.endswith(rotation.kid)
    started = make_app(dpop_nonce=True, key_cache_seconds=300).test_client()
    after = _nonce(started, app_client, prover)
    assert after.endswith(f".{rotation.kid}")  # made under the next key, before it signs
    # Each takes the other's nonces: the one with the old keys learns the next key from it.
    assert _requests_in_turn([through, started] * 3, app_client, prover, before) == [0] * 6
    assert _nonce(through, app_client, prover).endswith(f".{rotation.kid}")


def test_after_an_immediate_rotation_old_nonces_cost_at_most_one_retry(
    make_app: Any, app_client: RegisteredClient, prover: Prover
) -> None:
    cached = make_app(dpop_nonce=True, key_cache_seconds=300)
    through = cached.test_client()
    before = _nonce(through, app_client, prover)  # it has loaded the current key, for long
    with cached.app_context():
        assert rotate(db.engine, KeyWrapper(), 0, now=True) is not None  # the old key retires
    started = make_app(dpop_nonce=True, key_cache_seconds=300).test_client()  # new key only
    # The retired key's private part is gone: its nonces die once, then no worker refuses
    # another's (the one that missed the rotation learns of it from the new key's nonce).
    retries = _requests_in_turn([started, through] * 3, app_client, prover, before)
    assert retries == [1, 0, 0, 0, 0, 0]


def test_a_revoked_keys_nonces_are_refused(
    make_app: Any, app: Flask, client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    from tokenserver.keys import revoke

    nonce = _nonce(client, app_client, prover)
    with app.app_context():
        revoke(db.engine, KeyWrapper(), nonce.partition(".")[2])
    started = make_app(dpop_nonce=True).test_client()
    refused = _token(started, app_client, prover.proof("POST", TOKEN_URL, **_with_nonce(nonce)))
    _told_to_use_a_nonce(refused)


def test_without_the_setting_no_nonce_is_asked_for(make_app: Any, prover: Prover) -> None:
    plain = make_app()
    client = plain.test_client()
    actions = Actions(plain, client)
    actions.user("alice")
    caller = actions.oauth_client("app")
    issued = _token(client, caller, prover.proof("POST", TOKEN_URL))
    assert issued.status_code == 200 and issued.json["token_type"] == "DPoP"
    assert "DPoP-Nonce" not in issued.headers
    token = issued.json["access_token"]
    used = _get(client, "/junk", token, prover.proof("GET", f"{ISSUER}/junk", token))
    assert used.status_code == 200 and "DPoP-Nonce" not in used.headers


# --- against real gunicorn ------------------------------------------------------------------


def test_live_workers_share_nonces(
    live_server_factory: Any, app: Flask, app_client: RegisteredClient, prover: Prover
) -> None:
    server: LiveServer = live_server_factory(workers=2, TOKENSERVER_DPOP_NONCE="true")

    def token(nonce: str | None) -> requests.Response:
        claims = _with_nonce(nonce) if nonce else {}
        return requests.post(
            f"{server.url}/oauth/token",
            data=PASSWORD_GRANT,
            auth=app_client.auth,
            headers={"DPoP": prover.proof("POST", TOKEN_URL, **claims)},
            timeout=10,
        )

    refused = token(None)
    assert refused.status_code == 400 and refused.json()["error"] == "use_dpop_nonce"
    issued = token(refused.headers["DPoP-Nonce"])
    assert issued.status_code == 200, issued.text
    access, nonce = issued.json()["access_token"], issued.headers["DPoP-Nonce"]
    # Fresh connections land on either worker; each takes the nonce another one gave.
    for _ in range(6):
        proof = prover.proof("GET", f"{ISSUER}/junk", access, **_with_nonce(nonce))
        headers = {"Authorization": f"DPoP {access}", "DPoP": proof}
        answered = requests.get(f"{server.url}/junk", headers=headers, timeout=10)
        assert answered.status_code == 200, answered.text
        nonce = answered.headers["DPoP-Nonce"]
