"""DPoP (RFC 9449): tokens bound to a client's key, proofs checked at the token endpoint and
at every resource, a proof used once across workers and nodes."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
import requests
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from tokenserver.models import utcnow

from .conftest import PASSWORD, REDIS_URL, Actions, LiveServer, RegisteredClient
from .helpers import BARE_CHALLENGE, REDIRECT, Flow, Prover, b64url, pkce, query_of

ISSUER = "http://localhost:8000"  # the test settings' issuer: proofs name it, not the hop
TOKEN_URL = f"{ISSUER}/oauth/token"
JUNK_URL = f"{ISSUER}/junk"


@pytest.fixture
def prover() -> Prover:
    return Prover()


@pytest.fixture
def app_client(actions: Actions) -> RegisteredClient:
    """Alice, and a confidential client with the password and refresh grants."""
    actions.user("alice")
    return actions.oauth_client("app")


@pytest.fixture
def public_client(actions: Actions) -> RegisteredClient:
    actions.user("alice")
    return actions.oauth_client("phone", public=True)


def _token(client: FlaskClient, caller: RegisteredClient, proof: str | None, **data: str) -> Any:
    data = data or {"grant_type": "password", "username": "alice", "password": PASSWORD}
    headers = {"DPoP": proof} if proof else {}
    if caller.secret is None:
        return client.post(
            "/oauth/token", data={**data, "client_id": caller.client_id}, headers=headers
        )
    return client.post("/oauth/token", data=data, headers=headers, auth=caller.auth)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(jws.extract_compact(token.encode()).payload)
    return claims


def _dpop_get(
    client: FlaskClient, token: str, proof: str | None, path: str = "/junk", scheme: str = "DPoP"
) -> Any:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return client.get(path, headers=headers)


@pytest.fixture
def bound(client: FlaskClient, app_client: RegisteredClient, prover: Prover) -> str:
    """An access token bound to `prover`'s key."""
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL))
    assert response.status_code == 200, response.json
    token: str = response.json["access_token"]
    return token


def _refused(response: Any, error: str) -> None:
    assert response.status_code == 401
    assert response.json["error"] == error
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert f'error="{error}"' in challenge
    assert 'algs="ES256 ' in challenge


# --- the token endpoint -------------------------------------------------------------------


def test_token_with_a_proof_is_bound_to_its_key(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL))
    assert response.status_code == 200
    assert response.json["token_type"] == "DPoP"
    assert _claims(response.json["access_token"])["cnf"] == {"jkt": prover.jkt}


def test_token_without_a_proof_stays_bearer(
    client: FlaskClient, app_client: RegisteredClient
) -> None:
    response = _token(client, app_client, None)
    assert response.json["token_type"] == "Bearer"
    assert "cnf" not in _claims(response.json["access_token"])


def test_client_credentials_token_is_bound_too(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    proof = prover.proof("POST", TOKEN_URL)
    response = _token(client, app_client, proof, grant_type="client_credentials")
    assert response.json["token_type"] == "DPoP"
    assert _claims(response.json["access_token"])["cnf"]["jkt"] == prover.jkt


@pytest.mark.parametrize("typ", ["dpop+jwt", "application/dpop+jwt", "DPoP+JWT"])
def test_a_proofs_typ_is_a_media_type_compared_as_one(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover, typ: str
) -> None:
    # RFC 7515 §4.1.9: case-insensitive, and "application/" may be left off or not.
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL, header={"typ": typ}))
    assert response.status_code == 200, response.json
    assert response.json["token_type"] == "DPoP"


@pytest.mark.parametrize(
    "change",
    [
        {"claims": {"htu": JUNK_URL}},
        {"claims": {"htu": "http://127.0.0.1:5000/oauth/token"}},  # the hop, not the issuer
        {"claims": {"htm": "GET"}},
        {"age": 300},
        {"drop": ("jti",)},
        {"header": {"typ": "JWT"}},
        {"header": {"typ": "application/application/dpop+jwt"}},
        {"header": {"typ": "text/dpop+jwt"}},
        # An iat that is not a time: JSON's NaN passes every comparison; 10**400 fits no float.
        pytest.param({"claims": {"iat": float("nan")}}, id="iat-nan"),
        pytest.param({"claims": {"iat": 10**400}}, id="iat-huge"),
        pytest.param({"claims": {"iat": -(10**400)}}, id="iat-minus-huge"),
    ],
)
def test_token_request_with_a_bad_proof_is_invalid_dpop_proof(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover, change: dict[str, Any]
) -> None:
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL, **change))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.json


def test_two_dpop_headers_are_refused_at_the_token_endpoint(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    # RFC 9449 §4.3 point 1: one proof; which of two would bind the token is anyone's guess.
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    twice = [("DPoP", prover.proof("POST", TOKEN_URL)), ("DPoP", prover.proof("POST", TOKEN_URL))]
    response = client.post("/oauth/token", data=data, headers=twice, auth=app_client.auth)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_dpop_proof"
    assert "only one DPoP header" in response.json["error_description"]
    assert "access_token" not in response.json


def test_a_proof_buys_one_token(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    proof = prover.proof("POST", TOKEN_URL)
    assert _token(client, app_client, proof).status_code == 200
    replayed = _token(client, app_client, proof)
    assert replayed.status_code == 400
    assert replayed.json["error"] == "invalid_dpop_proof"


def test_garbage_proof_is_a_clear_error(client: FlaskClient, app_client: RegisteredClient) -> None:
    for proof in ("garbage", "a.b.c", "é" * 10, "x" * 10_000, "e30.e30."):
        response = _token(client, app_client, proof)
        assert response.status_code == 400
        assert response.json["error"] == "invalid_dpop_proof"


def _deep_proof(prover: Prover, method: str, url: str, token: str | None = None) -> str:
    """A proof signed by `prover`, its claims holding an array nested 1,200 deep."""
    claims = _claims(prover.proof(method, url, token))
    deep = "[" * 1200 + "]" * 1200  # past Python's recursion limit, within the proof's size
    payload = json.dumps(claims)[:-1] + f', "deep": {deep}}}'
    header = {"typ": "dpop+jwt", "alg": prover.alg, "jwk": prover.key.as_dict(private=False)}
    return jws.serialize_compact(header, payload.encode(), prover.key)


def test_deeply_nested_proof_is_invalid_dpop_proof(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    response = _token(client, app_client, _deep_proof(prover, "POST", TOKEN_URL))
    assert response.status_code == 400
    assert response.json["error"] == "invalid_dpop_proof"
    assert "access_token" not in response.json


def test_a_jti_holding_a_lone_surrogate_is_single_use_too(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    # Legal as a JSON escape ("\\ud800"), not encodable as UTF-8.
    proof = prover.proof("POST", TOKEN_URL, claims={"jti": "\ud800"})
    assert _token(client, app_client, proof).status_code == 200
    replayed = _token(client, app_client, proof)
    assert replayed.status_code == 400
    assert replayed.json["error"] == "invalid_dpop_proof"


def test_public_clients_refresh_token_is_bound(
    client: FlaskClient, public_client: RegisteredClient, prover: Prover
) -> None:
    issued = _token(client, public_client, prover.proof("POST", TOKEN_URL)).json
    refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}

    without = _token(client, public_client, None, **refresh)
    assert without.status_code == 400
    assert without.json["error"] == "invalid_grant"
    # The client hears what to do: a proof is missing, not made with the wrong key.
    assert "send a DPoP proof" in without.json["error_description"]
    thief = Prover()
    stolen = _token(client, public_client, thief.proof("POST", TOKEN_URL), **refresh)
    assert stolen.status_code == 400
    assert stolen.json["error"] == "invalid_grant"
    assert "another DPoP key" in stolen.json["error_description"]

    # Refused, not revoked: the owner, with the key, still refreshes.
    renewed = _token(client, public_client, prover.proof("POST", TOKEN_URL), **refresh)
    assert renewed.status_code == 200
    assert renewed.json["token_type"] == "DPoP"
    assert _claims(renewed.json["access_token"])["cnf"]["jkt"] == prover.jkt
    # The rotated refresh token is bound as well.
    again = {"grant_type": "refresh_token", "refresh_token": renewed.json["refresh_token"]}
    assert _token(client, public_client, None, **again).json["error"] == "invalid_grant"


def test_a_public_clients_unbound_login_refreshed_with_a_proof_is_bound_to_its_key(
    client: FlaskClient, public_client: RegisteredClient, prover: Prover
) -> None:
    issued = _token(client, public_client, None).json
    assert issued["token_type"] == "Bearer"
    refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    renewed = _token(client, public_client, prover.proof("POST", TOKEN_URL), **refresh)
    assert renewed.status_code == 200
    assert renewed.json["token_type"] == "DPoP"
    # RFC 9449 §5: from now on the login's refresh tokens need the key that proof was made with.
    latest = {"grant_type": "refresh_token", "refresh_token": renewed.json["refresh_token"]}
    for proof in (None, Prover().proof("POST", TOKEN_URL)):
        refused = _token(client, public_client, proof, **latest)
        assert refused.status_code == 400
        assert refused.json["error"] == "invalid_grant"
        assert "DPoP key" in refused.json["error_description"]
    again = _token(client, public_client, prover.proof("POST", TOKEN_URL), **latest)
    assert again.status_code == 200
    assert _claims(again.json["access_token"])["cnf"]["jkt"] == prover.jkt


def test_of_two_refreshes_racing_to_bind_a_login_with_different_keys_one_binds(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenserver.oauth import records

    app = make_app(refresh_reuse_grace=30)  # the second may present the spent token again
    client = app.test_client()
    actions = Actions(app, client)
    actions.user("alice")
    phone = actions.oauth_client("phone", public=True)
    issued = _token(client, phone, None).json
    refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    # Each refresh reads the login as unbound, as the second would have before the first's
    # commit: only the conditional binding, in the writing transaction, can tell them apart.
    read = records.lookups.refresh_record
    monkeypatch.setattr(
        records.lookups, "refresh_record", lambda h: dataclasses.replace(read(h), dpop_jkt=None)
    )
    owner, other = Prover(), Prover()
    first = _token(client, phone, owner.proof("POST", TOKEN_URL), **refresh)
    assert first.status_code == 200
    second = _token(client, phone, other.proof("POST", TOKEN_URL), **refresh)
    assert second.status_code == 400
    assert second.json["error"] == "invalid_grant"
    assert "DPoP key" in second.json["error_description"]
    monkeypatch.undo()
    latest = {"grant_type": "refresh_token", "refresh_token": first.json["refresh_token"]}
    assert _token(client, phone, other.proof("POST", TOKEN_URL), **latest).status_code == 400
    assert _token(client, phone, owner.proof("POST", TOKEN_URL), **latest).status_code == 200


def test_a_spent_bound_refresh_token_without_its_key_is_refused_and_the_login_lives(
    client: FlaskClient, public_client: RegisteredClient, prover: Prover, runner: FlaskCliRunner
) -> None:
    issued = _token(client, public_client, prover.proof("POST", TOKEN_URL)).json
    spent = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    renewed = _token(client, public_client, prover.proof("POST", TOKEN_URL), **spent).json
    # A thief replays the spent token, with no proof or a key of its own: refused...
    for proof in (None, Prover().proof("POST", TOKEN_URL)):
        replayed = _token(client, public_client, proof, **spent)
        assert replayed.status_code == 400
        assert replayed.json["error"] == "invalid_grant"
        assert "DPoP key" in replayed.json["error_description"]

    # ...and the owner's login goes on: its access token works, its refresh token refreshes.
    def me() -> Any:
        token = renewed["access_token"]
        proof = prover.proof("GET", f"{ISSUER}/users/me", token)
        return client.get("/users/me", headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    assert me().status_code == 200
    latest = {"grant_type": "refresh_token", "refresh_token": renewed["refresh_token"]}
    assert (
        _token(client, public_client, prover.proof("POST", TOKEN_URL), **latest).status_code == 200
    )
    # The owner's own key replaying the spent token still ends the login (RFC 9700 §4.14.2).
    reused = _token(client, public_client, prover.proof("POST", TOKEN_URL), **spent)
    assert reused.status_code == 400 and reused.json["error"] == "invalid_grant"
    assert "DPoP key" not in reused.json["error_description"]
    assert me().status_code == 401


def test_confidential_clients_refresh_token_is_not_bound(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    issued = _token(client, app_client, prover.proof("POST", TOKEN_URL)).json
    refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    plain = _token(client, app_client, None, **refresh)
    assert plain.status_code == 200
    assert plain.json["token_type"] == "Bearer"
    refresh["refresh_token"] = plain.json["refresh_token"]
    other = Prover()
    rebound = _token(client, app_client, other.proof("POST", TOKEN_URL), **refresh)
    assert _claims(rebound.json["access_token"])["cnf"]["jkt"] == other.jkt


# --- proofs of every kind of key --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (lambda: ECKey.generate_key("P-384"), "ES384"),
        (lambda: RSAKey.generate_key(2048), "RS256"),
        (lambda: RSAKey.generate_key(2048), "PS256"),
        (lambda: OKPKey.generate_key("Ed25519"), "EdDSA"),
        (lambda: OKPKey.generate_key("Ed25519"), "Ed25519"),
    ],
)
def test_every_listed_algorithm_works(
    client: FlaskClient, app_client: RegisteredClient, key: Any, alg: str
) -> None:
    prover = Prover(key(), alg)
    token = _token(client, app_client, prover.proof("POST", TOKEN_URL)).json["access_token"]
    assert _claims(token)["cnf"]["jkt"] == prover.jkt
    assert _dpop_get(client, token, prover.proof("GET", JUNK_URL, token)).status_code == 200


def test_symmetric_and_unsigned_proofs_are_refused(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    secret = OctKey.generate_key(256)
    hs256 = prover.proof("POST", TOKEN_URL, header={"alg": "HS256"}, signer=secret)
    oct_jwk = prover.proof(
        "POST", TOKEN_URL, header={"alg": "HS256", "jwk": secret.as_dict()}, signer=secret
    )
    header = b64url(
        json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": prover.key.as_dict()}).encode()
    )
    body = b64url(
        json.dumps(
            {"htm": "POST", "htu": TOKEN_URL, "iat": int(time.time()), "jti": "none-1"}
        ).encode()
    )
    unsigned = f"{header}.{body}."
    for proof in (hs256, oct_jwk, unsigned):
        response = _token(client, app_client, proof)
        assert response.status_code == 400
        assert response.json["error"] == "invalid_dpop_proof"


def test_proof_carrying_its_private_key_is_refused(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    proof = prover.proof("POST", TOKEN_URL, header={"jwk": prover.key.as_dict(private=True)})
    response = _token(client, app_client, proof)
    assert response.status_code == 400
    assert "private" in response.json["error_description"]


def test_small_rsa_key_and_mismatched_alg_are_refused(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    small = Prover(RSAKey.generate_key(1024), "RS256")
    signed = prover.proof("POST", TOKEN_URL)
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": prover.key.as_dict()}
    rsa_alg_on_ec_key = ".".join([b64url(json.dumps(header).encode()), *signed.split(".")[1:]])
    for proof in (small.proof("POST", TOKEN_URL), rsa_alg_on_ec_key):
        assert _token(client, app_client, proof).json["error"] == "invalid_dpop_proof"


# --- resources ----------------------------------------------------------------------------------


def test_bound_token_works_with_a_proof(client: FlaskClient, bound: str, prover: Prover) -> None:
    response = _dpop_get(client, bound, prover.proof("GET", JUNK_URL, bound))
    assert response.status_code == 200
    me = _dpop_get(client, bound, prover.proof("GET", f"{ISSUER}/users/me", bound), "/users/me")
    assert me.json["username"] == "alice"
    # The query is no part of htu (RFC 9449 §4.3).
    paged = _dpop_get(client, bound, prover.proof("GET", JUNK_URL, bound), "/junk?limit=5")
    assert paged.status_code == 200


@pytest.mark.parametrize(
    "htu",
    [
        "HTTP://LOCALHOST:8000/users/me",  # scheme and host in any case (RFC 3986 §6.2.2.1)
        f"{ISSUER}/users/%6De",  # an unreserved character percent-encoded (§6.2.2.2)
        f"{ISSUER}/users/m%65?page=2#top",  # and neither query nor fragment counts
        f"{ISSUER}/junk/../users/./me",  # dot segments removed (§6.2.2.3)
        f"{ISSUER}/../../users/me",  # never above the root
    ],
)
def test_a_proofs_htu_is_compared_as_a_uri_in_any_spelling(
    client: FlaskClient, bound: str, prover: Prover, htu: str
) -> None:
    # RFC 9449 §4.3: servers SHOULD normalise both URIs (RFC 3986 §6.2.2, §6.2.3) to compare.
    me = _dpop_get(client, bound, prover.proof("GET", htu, bound), "/users/me")
    assert me.status_code == 200, me.json


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"claims": {"htu": f"{ISSUER}/users/me"}}, "invalid_dpop_proof"),
        ({"claims": {"htu": "https://localhost:8000/junk"}}, "invalid_dpop_proof"),
        ({"claims": {"htm": "POST"}}, "invalid_dpop_proof"),
        ({"age": 120}, "invalid_dpop_proof"),
        ({"age": -120}, "invalid_dpop_proof"),
        ({"drop": ("ath",)}, "invalid_dpop_proof"),
        (
            {"claims": {"ath": b64url(hashlib.sha256(b"another token").digest())}},
            "invalid_dpop_proof",
        ),
        ({"header": {"typ": "at+jwt"}}, "invalid_dpop_proof"),
    ],
)
def test_bad_proof_at_a_resource_is_refused(
    client: FlaskClient, bound: str, prover: Prover, change: dict[str, Any], error: str
) -> None:
    _refused(_dpop_get(client, bound, prover.proof("GET", JUNK_URL, bound, **change)), error)


def test_deeply_nested_proof_at_a_resource_is_refused(
    client: FlaskClient, bound: str, prover: Prover
) -> None:
    proof = _deep_proof(prover, "GET", JUNK_URL, bound)
    _refused(_dpop_get(client, bound, proof), "invalid_dpop_proof")
    # The token still works with a proof that is well formed.
    assert _dpop_get(client, bound, prover.proof("GET", JUNK_URL, bound)).status_code == 200


def test_proof_from_another_key_is_refused(client: FlaskClient, bound: str) -> None:
    thief = Prover()
    _refused(_dpop_get(client, bound, thief.proof("GET", JUNK_URL, bound)), "invalid_dpop_proof")


def test_replayed_proof_is_refused(client: FlaskClient, bound: str, prover: Prover) -> None:
    proof = prover.proof("GET", JUNK_URL, bound)
    assert _dpop_get(client, bound, proof).status_code == 200
    _refused(_dpop_get(client, bound, proof), "invalid_dpop_proof")


def test_bound_token_sent_as_bearer_is_refused(client: FlaskClient, bound: str) -> None:
    response = client.get("/junk", headers={"Authorization": f"Bearer {bound}"})
    _refused(response, "invalid_token")


def test_dpop_token_needs_its_proof(client: FlaskClient, bound: str, prover: Prover) -> None:
    _refused(_dpop_get(client, bound, None), "invalid_dpop_proof")
    twice = client.get(
        "/junk",
        headers=[
            ("Authorization", f"DPoP {bound}"),
            ("DPoP", prover.proof("GET", JUNK_URL, bound)),
            ("DPoP", prover.proof("GET", JUNK_URL, bound)),
        ],
    )
    _refused(twice, "invalid_dpop_proof")
    assert "only one DPoP header" in twice.json["error_description"]


def _two_tokens(token: str) -> list[list[tuple[str, str]]]:
    """Authorization headers that present two tokens: two headers, or two in one."""
    return [
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        [("Authorization", f"DPoP {token}"), ("Authorization", f"Bearer {token}")],
        [("Authorization", f"Bearer {token}, DPoP {token}")],
        [("Authorization", f"Bearer {token} {token}")],
    ]


@pytest.mark.parametrize("case", range(4))
def test_two_access_tokens_are_invalid_request_not_an_invalid_token(
    client: FlaskClient, app_client: RegisteredClient, bound: str, prover: Prover, case: int
) -> None:
    # RFC 6750 §3.1: invalid_request (400). Read as one invalid token, the client would take
    # its good token for a bad one and throw it away.
    plain = _token(client, app_client, None).json["access_token"]
    for token, path in [(plain, "/junk"), (bound, "/junk"), (plain, "/users/me")]:
        proof = prover.proof("GET", f"{ISSUER}{path}", token)
        response = client.get(path, headers=[*_two_tokens(token)[case], ("DPoP", proof)])
        assert response.status_code == 400
        assert response.json["error"] == "invalid_request"
        bearer, dpop = response.headers.getlist("WWW-Authenticate")
        assert bearer.startswith('Bearer realm="tokenserver", error="invalid_request"')
        assert dpop.startswith('DPoP realm="tokenserver", error="invalid_request"')
        assert 'algs="ES256 ' in dpop
    # Each token, sent once, still works.
    assert client.get("/junk", headers={"Authorization": f"Bearer {plain}"}).status_code == 200
    assert _dpop_get(client, bound, prover.proof("GET", JUNK_URL, bound)).status_code == 200


def test_a_user_route_answers_a_dpop_bound_client_token_in_the_dpop_scheme(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    # RFC 9449 §7.1: a refusal of a DPoP request is a DPoP challenge, naming our algorithms.
    proof = prover.proof("POST", TOKEN_URL)
    token = _token(client, app_client, proof, grant_type="client_credentials").json
    assert token["token_type"] == "DPoP"
    at = token["access_token"]
    for path in ("/users/me", "/junk"):
        response = _dpop_get(client, at, prover.proof("GET", f"{ISSUER}{path}", at), path)
        assert response.status_code == 403
        assert response.json["error"] == "insufficient_scope"
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('DPoP realm="tokenserver", error="insufficient_scope"')
        assert 'algs="ES256 ' in challenge


def test_unbound_or_forged_token_under_dpop_is_invalid_token(
    client: FlaskClient, app_client: RegisteredClient, bound: str, prover: Prover
) -> None:
    plain = _token(client, app_client, None).json["access_token"]
    _refused(_dpop_get(client, plain, prover.proof("GET", JUNK_URL, plain)), "invalid_token")
    forged = bound[:-4] + ("AAAA" if not bound.endswith("AAAA") else "BBBB")
    _refused(_dpop_get(client, forged, prover.proof("GET", JUNK_URL, forged)), "invalid_token")


def test_bearer_tokens_work_as_before(client: FlaskClient, app_client: RegisteredClient) -> None:
    plain = _token(client, app_client, None).json["access_token"]
    assert client.get("/junk", headers={"Authorization": f"Bearer {plain}"}).status_code == 200


def test_no_token_gets_both_challenges(client: FlaskClient) -> None:
    response = client.get("/junk")
    assert response.status_code == 401
    challenges = response.headers.getlist("WWW-Authenticate")
    assert challenges[0] == BARE_CHALLENGE
    assert challenges[1].startswith('DPoP realm="tokenserver", algs="ES256')


def test_dpop_token_without_the_scope_is_insufficient_scope(
    client: FlaskClient, app_client: RegisteredClient, prover: Prover
) -> None:
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    data["scope"] = "junk:write"
    response = _token(client, app_client, prover.proof("POST", TOKEN_URL), **data)
    token = response.json["access_token"]
    refused = _dpop_get(client, token, prover.proof("GET", JUNK_URL, token))
    assert refused.status_code == 403
    assert refused.headers["WWW-Authenticate"].startswith('DPoP realm="tokenserver", error=')


# --- introspection, metadata, housekeeping ----------------------------------------------------


def test_introspection_reports_the_binding(
    client: FlaskClient, actions: Actions, public_client: RegisteredClient, prover: Prover
) -> None:
    issued = _token(client, public_client, prover.proof("POST", TOKEN_URL)).json
    api = actions.oauth_client("api", introspect=True)
    access = client.post("/oauth/introspect", data={"token": issued["access_token"]}, auth=api.auth)
    assert access.json["token_type"] == "DPoP"
    assert access.json["cnf"] == {"jkt": prover.jkt}
    refresh = client.post(
        "/oauth/introspect", data={"token": issued["refresh_token"]}, auth=api.auth
    )
    assert refresh.json["cnf"] == {"jkt": prover.jkt}
    plain = _token(client, actions.oauth_client("web"), None).json["access_token"]
    unbound = client.post("/oauth/introspect", data={"token": plain}, auth=api.auth).json
    assert unbound["token_type"] == "Bearer"
    assert "cnf" not in unbound


def test_metadata_lists_the_proof_algorithms(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        algs = client.get(path).json["dpop_signing_alg_values_supported"]
        assert "ES256" in algs
        assert not {"none", "HS256"} & set(algs)


def test_purge_forgets_expired_proof_ids(
    client: FlaskClient, runner: FlaskCliRunner, app_client: RegisteredClient, prover: Prover
) -> None:
    proof = prover.proof("POST", TOKEN_URL)
    assert _token(client, app_client, proof).status_code == 200
    assert "0 spent JWT ids" in runner.invoke(args=["tokens", "purge"]).output
    with time_machine.travel(utcnow() + timedelta(minutes=3)):
        assert "1 spent JWT id and" in runner.invoke(args=["tokens", "purge"]).output


# --- against real gunicorn ------------------------------------------------------------------


def _live_token(server: LiveServer, caller: RegisteredClient, prover: Prover) -> dict[str, Any]:
    response = requests.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=caller.auth,
        headers={"DPoP": prover.proof("POST", TOKEN_URL)},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def test_live_flow_binds_uses_and_refuses_replays(
    live_server: LiveServer, app_client: RegisteredClient, prover: Prover
) -> None:
    issued = _live_token(live_server, app_client, prover)
    assert issued["token_type"] == "DPoP"
    token = issued["access_token"]
    assert _claims(token)["cnf"]["jkt"] == prover.jkt

    proof = prover.proof("GET", JUNK_URL, token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    first = requests.get(f"{live_server.url}/junk", headers=headers, timeout=10)
    assert first.status_code == 200
    # Fresh connections land on any worker; each one must see the id already spent.
    for _ in range(4):
        again = requests.get(f"{live_server.url}/junk", headers=headers, timeout=10)
        assert again.status_code == 401
        assert again.json()["error"] == "invalid_dpop_proof"
        assert again.headers["WWW-Authenticate"].startswith("DPoP ")
    bearer = requests.get(
        f"{live_server.url}/junk", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert bearer.status_code == 401
    assert bearer.json()["error"] == "invalid_token"
    # gunicorn joins two Authorization headers with a bare comma: two tokens, not a bad one.
    connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=10)
    connection.putrequest("GET", "/junk")
    for _ in range(2):
        connection.putheader("Authorization", f"DPoP {token}")
    connection.putheader("DPoP", prover.proof("GET", JUNK_URL, token))
    connection.endheaders()
    twice = connection.getresponse()
    assert twice.status == 400
    assert json.loads(twice.read())["error"] == "invalid_request"
    connection.close()


def test_concurrent_replays_across_workers_have_one_winner(
    live_server: LiveServer, app_client: RegisteredClient, prover: Prover
) -> None:
    token = _live_token(live_server, app_client, prover)["access_token"]
    headers = {"Authorization": f"DPoP {token}", "DPoP": prover.proof("GET", JUNK_URL, token)}

    def attempt(_: int) -> int:
        return requests.get(f"{live_server.url}/junk", headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(attempt, range(16)))
    assert statuses.count(200) == 1
    assert statuses.count(401) == 15


def test_a_proof_spent_on_one_node_is_refused_on_another(
    live_server: LiveServer,
    live_server_factory: Any,
    app_client: RegisteredClient,
    prover: Prover,
) -> None:
    other = live_server_factory(workers=1)
    token = _live_token(live_server, app_client, prover)["access_token"]
    headers = {"Authorization": f"DPoP {token}", "DPoP": prover.proof("GET", JUNK_URL, token)}
    assert requests.get(f"{other.url}/junk", headers=headers, timeout=10).status_code == 200
    replayed = requests.get(f"{live_server.url}/junk", headers=headers, timeout=10)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "invalid_dpop_proof"


# --- codes bound at /oauth/authorize (RFC 9449 §10) ---------------------------------------------


def _bound_code(flow: Flow, prover: Prover) -> tuple[str, str | None, str, str]:
    client_id, secret = flow.register()
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, dpop_jkt=prover.jkt)
    return client_id, secret, code, verifier


def _exchange(flow: Flow, bound: tuple[str, str | None, str, str], proof: str | None) -> Any:
    client_id, secret, code, verifier = bound
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    headers = {"DPoP": proof} if proof else {}
    return flow.client.post(
        "/oauth/token", data=data, headers=headers, auth=(client_id, secret or "")
    )


def test_code_bound_to_a_key_is_exchanged_with_its_proof(flow: Flow, prover: Prover) -> None:
    response = _exchange(flow, _bound_code(flow, prover), prover.proof("POST", TOKEN_URL))
    assert response.status_code == 200, response.json
    assert response.json["token_type"] == "DPoP"
    assert _claims(response.json["access_token"])["cnf"]["jkt"] == prover.jkt


@pytest.mark.parametrize("other_key", [False, True])
def test_code_bound_to_a_key_is_refused_without_it(
    flow: Flow, prover: Prover, other_key: bool
) -> None:
    proof = Prover().proof("POST", TOKEN_URL) if other_key else None
    response = _exchange(flow, _bound_code(flow, prover), proof)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_grant"
    said = "another DPoP key" if other_key else "send a DPoP proof"
    assert said in response.json["error_description"]


def test_malformed_dpop_jkt_is_redirected_back(flow: Flow) -> None:
    client_id, _ = flow.register()
    flow.login()
    _, challenge = pkce()
    response = flow.authorize(client_id, challenge, dpop_jkt="not a thumbprint")
    assert response.status_code == 302
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_an_empty_dpop_jkt_binds_the_code_to_no_key(flow: Flow) -> None:
    # RFC 6749 §3.1: a parameter sent without a value is treated as if omitted.
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, dpop_jkt="")
    exchanged = flow.exchange(client_id, secret, code, verifier)
    assert exchanged.status_code == 200 and exchanged.json["token_type"] == "Bearer"


def test_proofs_are_spent_in_redis_when_the_nodes_share_it(
    live_server_factory: Any, app: Flask, app_client: RegisteredClient, redis_prefix: str
) -> None:
    shared = {
        "TOKENSERVER_RATELIMIT_STORAGE_URI": REDIS_URL,
        "TOKENSERVER_RATELIMIT_KEY_PREFIX": redis_prefix,
    }
    one, two = live_server_factory(**shared), live_server_factory(workers=1, **shared)
    prover = Prover()
    token = _live_token(one, app_client, prover)["access_token"]
    headers = {"Authorization": f"DPoP {token}", "DPoP": prover.proof("GET", JUNK_URL, token)}
    assert requests.get(f"{two.url}/junk", headers=headers, timeout=10).status_code == 200
    replayed = requests.get(f"{one.url}/junk", headers=headers, timeout=10)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "invalid_dpop_proof"
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_prefix}:jti:*"))


def test_userinfo_takes_a_dpop_token(client: FlaskClient, actions: Actions, prover: Prover) -> None:
    actions.user("alice")
    oidc = actions.oauth_client("oidc", scope="openid profile")
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    data["scope"] = "openid profile"
    token = _token(client, oidc, prover.proof("POST", TOKEN_URL), **data).json["access_token"]
    url = f"{ISSUER}/oauth/userinfo"
    claims = _dpop_get(client, token, prover.proof("GET", url, token), "/oauth/userinfo")
    assert claims.status_code == 200
    assert claims.json["preferred_username"] == "alice"
    as_bearer = client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"})
    _refused(as_bearer, "invalid_token")
