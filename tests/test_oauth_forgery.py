"""Forged, tampered and out-of-policy access tokens are refused on every path that reads them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import Actions, RegisteredClient
from .helpers import BARE_CHALLENGE, b64url, claims_of

Forger = Callable[[dict[str, Any], RSAKey, RSAKey], str]


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode())


def _signed(claims: dict[str, Any], key: RSAKey, **header: Any) -> str:
    """A token signed by `key` (ours, unless a test says otherwise) with this header."""
    full = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **header}
    full = {name: value for name, value in full.items() if value is not None}
    if full["alg"] != key.alg:  # a copy of the key not pinned to its registered algorithm
        key = RSAKey.import_key(_without(key.as_dict(private=True), "alg"))
    return jwt.encode(full, claims, key, algorithms=[full["alg"]])


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != name}


def _alg_none(claims: dict[str, Any], ours: RSAKey, foreign: RSAKey) -> str:
    header = {"alg": "none", "typ": "at+jwt", "kid": ours.kid}
    return f"{_segment(header)}.{_segment(claims)}."


def _hs256_with_our_public_key(claims: dict[str, Any], ours: RSAKey, foreign: RSAKey) -> str:
    # Key confusion: HMAC keyed with the public key a naive verifier would use as the secret.
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'at+jwt', 'kid': ours.kid})}."
    signing_input += _segment(claims)
    secret = ours.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _tampered(claims: dict[str, Any], ours: RSAKey, foreign: RSAKey) -> str:
    # A real signature over the real claims, then the payload swapped for a better one.
    header, _payload, signature = _signed(claims, ours).split(".")
    better = {**claims, "sub": "1" if claims["sub"] != "1" else "2", "scope": "junk:write"}
    return f"{header}.{_segment(better)}.{signature}"


def _embedded_jwk(claims: dict[str, Any], ours: RSAKey, foreign: RSAKey) -> str:
    # RFC 7515 `jwk` header: a verifier that trusts it would take the attacker's key.
    return _signed(claims, foreign, jwk=foreign.as_dict(private=False))


FORGERIES: dict[str, Forger] = {
    "alg none": _alg_none,
    "HS256 keyed with our public key": _hs256_with_our_public_key,
    "foreign RSA key under our kid": lambda c, o, f: _signed(c, f, kid=o.kid),
    "foreign RSA key under its own kid": lambda c, o, f: _signed(c, f),
    "embedded jwk header": _embedded_jwk,
    "tampered claims": _tampered,
    "expired": lambda c, o, f: _signed({**c, "exp": int(time.time()) - 1}, o),
    "wrong iss": lambda c, o, f: _signed({**c, "iss": "https://evil.example"}, o),
    "wrong aud": lambda c, o, f: _signed({**c, "aud": "https://other.example"}, o),
    "aud list without ours": lambda c, o, f: _signed({**c, "aud": ["https://a.example"]}, o),
    "unknown kid": lambda c, o, f: _signed(c, o, kid="no-such-kid"),
    "no kid": lambda c, o, f: _signed(c, o, kid=None),
    "typ JWT": lambda c, o, f: _signed(c, o, typ="JWT"),
    "no typ": lambda c, o, f: jwt.encode(
        {"alg": "RS256", "kid": o.kid}, c, o, algorithms=["RS256"], default_type=None
    ),
    "RS384 with our key": lambda c, o, f: _signed(c, o, alg="RS384"),
    "PS256 with our key": lambda c, o, f: _signed(c, o, alg="PS256"),
    "missing jti": lambda c, o, f: _signed(_without(c, "jti"), o),
    "missing exp": lambda c, o, f: _signed(_without(c, "exp"), o),
    "missing sub": lambda c, o, f: _signed(_without(c, "sub"), o),
    "missing iss": lambda c, o, f: _signed(_without(c, "iss"), o),
    "missing aud": lambda c, o, f: _signed(_without(c, "aud"), o),
    "missing client_id": lambda c, o, f: _signed(_without(c, "client_id"), o),
    "exp as a string": lambda c, o, f: _signed({**c, "exp": str(c["exp"])}, o),
    "iat an hour ahead": lambda c, o, f: _signed({**c, "iat": int(time.time()) + 3600}, o),
    "jti never issued": lambda c, o, f: _signed({**c, "jti": "never-issued"}, o),
    "sub of another user": lambda c, o, f: _signed({**c, "sub": str(int(c["sub"]) + 1)}, o),
    # Our own key over a live token's jti: the claims must still be the ones it was issued.
    "scope wider than issued": lambda c, o, f: _signed({**c, "scope": f"{c['scope']} x:y"}, o),
    "exp later than issued": lambda c, o, f: _signed({**c, "exp": c["exp"] + 3600}, o),
    # Past the last date a datetime holds (year 9999), where the record lookup converts it.
    "exp past year 9999": lambda c, o, f: _signed({**c, "exp": 10**20}, o),
    "exp a huge float": lambda c, o, f: _signed({**c, "exp": 1e308}, o),
    "exp a fraction": lambda c, o, f: _signed({**c, "exp": c["exp"] + 0.5}, o),
}

GARBAGE = [
    "not-a-jwt",
    "a.b.c",
    "..",
    "eyJhbGciOiJSUzI1NiJ9..",
    "eyJ.eyJ.sig",
    "x" * 5000 + ".y.z",
    "\u00e9t\u00e9.\u00e9t\u00e9.\u00e9t\u00e9",
    _segment({"alg": "RS256", "kid": ["list"]}) + ".e30.c2ln",
    _segment({"alg": ["RS256"]}) + ".e30.c2ln",
    "W10.W10.W10",  # JSON arrays where objects belong
]


@pytest.fixture(scope="module")
def foreign_key() -> RSAKey:
    """An attacker's own RSA key."""
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    return key


@pytest.fixture
def real(actions: Actions) -> dict[str, Any]:
    """A genuine login of alice, whose claims the forgeries start from."""
    return actions.login("alice")


def _forge(app: Flask, real: dict[str, Any], forger: Forger, foreign: RSAKey) -> str:
    our_key = app.extensions["tokenserver.keyring"].signing_key()
    return forger(claims_of(real["access_token"]), our_key, foreign)


def refusal_problems(
    client: FlaskClient, token: str, resource_server: RegisteredClient
) -> list[str]:
    """What, if anything, failed to refuse `token`: the bearer check or introspection."""
    problems = []
    me = client.get("/users/me", headers=Actions.bearer(token))
    challenge = me.headers.get("WWW-Authenticate", "")
    if (me.status_code, me.json.get("error")) != (401, "invalid_token"):
        problems.append(f"/users/me answered {me.status_code} {me.json}")
    elif 'error="invalid_token"' not in challenge:
        problems.append(f"/users/me challenge was {challenge!r}")
    introspection = client.post(
        "/oauth/introspect", data={"token": token}, auth=resource_server.auth
    )
    if introspection.status_code != 200 or introspection.json != {"active": False}:
        problems.append(f"introspection answered {introspection.status_code} {introspection.json}")
    return problems


def test_the_genuine_token_passes_both_checks(
    client: FlaskClient, real: dict[str, Any], resource_server: RegisteredClient
) -> None:
    # The control for every refusal below: the same setup accepts the real thing.
    me = client.get("/users/me", headers=Actions.bearer(real["access_token"]))
    assert me.status_code == 200
    introspection = client.post(
        "/oauth/introspect", data={"token": real["access_token"]}, auth=resource_server.auth
    )
    assert introspection.json["active"] is True


def test_resigning_the_real_claims_with_our_key_passes(
    app: Flask, client: FlaskClient, real: dict[str, Any], foreign_key: RSAKey
) -> None:
    # Proves the forgery helpers make tokens the server would take but for the one change.
    token = _forge(app, real, lambda c, o, f: _signed(c, o), foreign_key)
    assert client.get("/users/me", headers=Actions.bearer(token)).status_code == 200


def test_forged_tokens_are_refused(
    app: Flask,
    client: FlaskClient,
    real: dict[str, Any],
    resource_server: RegisteredClient,
    foreign_key: RSAKey,
) -> None:
    accepted = {}
    for name, forger in FORGERIES.items():
        token = _forge(app, real, forger, foreign_key)
        problems = refusal_problems(client, token, resource_server)
        if problems:
            accepted[name] = problems
    assert accepted == {}


def test_garbage_tokens_are_refused_without_a_500(
    client: FlaskClient, resource_server: RegisteredClient
) -> None:
    accepted = {}
    for garbage in GARBAGE:
        problems = refusal_problems(client, garbage, resource_server)
        if problems:
            accepted[garbage[:40]] = problems
    assert accepted == {}


def test_forged_tokens_cannot_revoke_the_real_one(
    app: Flask, client: FlaskClient, real: dict[str, Any], foreign_key: RSAKey
) -> None:
    for forgery in ("alg none", "foreign RSA key under our kid", "wrong iss", "tampered claims"):
        token = _forge(app, real, FORGERIES[forgery], foreign_key)
        response = client.post("/oauth/revoke", data={"token": token}, auth=real["client"].auth)
        assert response.status_code == 200
    me = client.get("/users/me", headers=Actions.bearer(real["access_token"]))
    assert me.status_code == 200


def test_expired_genuine_token_is_refused_everywhere(
    client: FlaskClient, actions: Actions, resource_server: RegisteredClient
) -> None:
    with time_machine.travel(time.time(), tick=False) as clock:
        token = actions.login("alice")["access_token"]
        clock.shift(900)
        assert refusal_problems(client, token, resource_server) == []


def test_empty_token_is_refused(
    client: FlaskClient, actions: Actions, resource_server: RegisteredClient
) -> None:
    me = client.get("/users/me", headers={"Authorization": "Bearer "})
    assert me.status_code == 401
    assert me.headers["WWW-Authenticate"].startswith('Bearer realm="tokenserver"')
    introspection = client.post("/oauth/introspect", data={"token": ""}, auth=resource_server.auth)
    assert introspection.json == {"active": False}


def test_another_auth_scheme_is_a_bare_challenge(client: FlaskClient, real: dict[str, Any]) -> None:
    # RFC 6750 §3.1: no bearer credentials at all, so no error code in the challenge.
    token = real["access_token"]
    for authorization in (f"Basic {token}", f"Token {token}", f"bearer-ish {token}", token):
        response = client.get("/users/me", headers={"Authorization": authorization})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == BARE_CHALLENGE
        assert response.is_json


def test_lowercase_bearer_scheme_is_accepted(client: FlaskClient, real: dict[str, Any]) -> None:
    # RFC 7235 §2.1: the scheme name is case-insensitive.
    response = client.get("/users/me", headers={"Authorization": f"bearer {real['access_token']}"})
    assert response.status_code == 200


def test_insufficient_scope_names_the_scope_needed(client: FlaskClient, actions: Actions) -> None:
    reader = actions.login("alice", scope="junk:read")
    response = client.post(
        "/junk", json={"name": "x"}, headers=Actions.bearer(reader["access_token"])
    )
    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tokenserver", error="insufficient_scope"')
    assert 'scope="junk:write"' in challenge


def test_a_client_token_re_signed_with_another_clients_sub_is_refused(
    app: Flask, client: FlaskClient, actions: Actions, resource_server: RegisteredClient
) -> None:
    # A client_credentials token has no user: its subject is the client, and only that client.
    machine, other = actions.oauth_client("machine"), actions.oauth_client("other")
    issued = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=machine.auth
    )
    genuine = issued.json["access_token"]
    assert claims_of(genuine)["sub"] == machine.client_id
    our_key = app.extensions["tokenserver.keyring"].signing_key()
    resigned = _signed(claims_of(genuine), our_key)  # the control: taken but for the sub
    introspection = client.post(
        "/oauth/introspect", data={"token": resigned}, auth=resource_server.auth
    )
    assert introspection.json["active"] is True
    forged = _signed({**claims_of(genuine), "sub": other.client_id}, our_key)
    assert refusal_problems(client, forged, resource_server) == []
