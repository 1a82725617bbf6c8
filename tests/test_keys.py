"""Signing keys: first key on demand, rotation, retirement, and the per-worker cache."""

from __future__ import annotations

import time
from typing import Any

import time_machine
from flask import Flask
from sqlalchemy import delete

from tokenserver.extensions import db
from tokenserver.keys import KeyRing, list_keys, rotate
from tokenserver.models import SigningKey

from .conftest import Actions
from .test_oauth_token import header_of

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def ring(app: Flask, cache_seconds: int = 3600, access_ttl: int = 900) -> KeyRing:
    """A fresh key ring on the test database, as a new worker would have."""
    with app.app_context():
        return KeyRing(db.engine, cache_seconds, access_ttl)


def test_first_key_is_made_on_demand(app: Flask) -> None:
    with app.app_context():
        db.session.execute(delete(SigningKey))
        db.session.commit()
        keyring = ring(app)
        key = keyring.signing_key()
        assert key.kid
        assert [k.kid for k in list_keys(db.engine)] == [key.kid]
        assert key.is_private
        # A second worker finds it rather than making its own.
        assert ring(app).signing_key().kid == key.kid


def test_rotation_makes_a_new_current_key_and_keeps_the_old_one_verifying(app: Flask) -> None:
    old = ring(app).signing_key().kid
    with app.app_context():
        new = rotate(db.engine)
        stored = {k.kid: k for k in list_keys(db.engine)}
    assert new != old
    assert stored[new].retired_at is None
    assert stored[old].retired_at is not None
    fresh = ring(app)
    assert fresh.signing_key().kid == new
    assert fresh.verification_key(old) is not None
    assert [jwk["kid"] for jwk in fresh.jwks()["keys"]][:2] == [new, old]


def test_jwks_never_shows_private_parts(app: Flask) -> None:
    with app.app_context():
        rotate(db.engine)
    keys = ring(app).jwks()["keys"]
    assert len(keys) >= 2
    for jwk in keys:
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert jwk["kty"] == "RSA"
        assert jwk["use"] == "sig"
        assert jwk["alg"] == "RS256"
        assert {"kid", "n", "e"} <= set(jwk)


def test_verification_keys_are_public_only(app: Flask) -> None:
    keyring = ring(app)
    kid = keyring.signing_key().kid
    with app.app_context():
        rotate(db.engine)
    assert keyring.verification_key(kid) is not None
    assert not ring(app).verification_key(kid).is_private  # type: ignore[union-attr]


def test_retired_key_is_dropped_once_its_tokens_have_expired(app: Flask) -> None:
    old = ring(app).signing_key().kid
    with time_machine.travel(time.time(), tick=False) as clock, app.app_context():
        rotate(db.engine)
        clock.shift(900 + 59)  # the longest token's life plus (most of) the skew grace
        assert ring(app).verification_key(old) is not None
        clock.shift(2)
        later = ring(app)
        assert later.verification_key(old) is None
        assert old not in [jwk["kid"] for jwk in later.jwks()["keys"]]


def test_unknown_kid_reloads_the_cache_at_once(app: Flask) -> None:
    # A worker whose cache predates a rotation elsewhere still verifies the new key's tokens.
    keyring = ring(app, cache_seconds=3600)
    old = keyring.signing_key().kid
    with app.app_context():
        new = rotate(db.engine)
    assert keyring.signing_key().kid == old  # still cached: it signs with what it knows
    assert keyring.verification_key(new) is not None
    assert keyring.signing_key().kid == new  # the miss refreshed everything
    assert keyring.verification_key("no-such-kid") is None


def test_new_tokens_carry_the_new_kid_after_rotation(make_app: Any) -> None:
    first_app = make_app()
    actions = Actions(first_app, first_app.test_client())
    actions.login("alice")
    old_token = actions.token(actions.oauth_client("again")).json["access_token"]
    with first_app.app_context():
        new_kid = rotate(db.engine)
    # A worker started after the rotation (or whose cache ran out) signs with the new key.
    second_app = make_app()
    oauth_client = actions.oauth_client("app2")
    second = Actions(second_app, second_app.test_client())
    new_token = second.token(oauth_client).json["access_token"]
    assert header_of(new_token)["kid"] == new_kid
    assert header_of(old_token)["kid"] != new_kid
    # Both apps accept both tokens.
    for client in (actions.client, second.client):
        for token in (old_token, new_token):
            assert client.get("/users/me", headers=Actions.bearer(token)).status_code == 200
