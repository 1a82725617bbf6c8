"""Signing keys: one current key, publish-then-use rotation, revocation, retirement, the cache."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from joserfc import jws
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from tokenserver.config import current_settings
from tokenserver.extensions import db
from tokenserver.keys import KeyRing, list_keys, promote_due, revoke, rotate
from tokenserver.keywrap import KeyWrapper
from tokenserver.models import SigningKey, utcnow
from tokenserver.oauth.codes import IdToken
from tokenserver.oauth.tokens import TokenRejected, verify_access_token

from .conftest import Actions
from .helpers import PRIVATE_MEMBERS, claims_of, header_of

PUBLISH = 65  # seconds a rotated key is published before it signs, in these tests
PLAIN = KeyWrapper()


def ring(app: Flask, cache_seconds: int = 3600, access_ttl: int = 900) -> KeyRing:
    """A fresh key ring on the test database, as a new worker would have."""
    with app.app_context():
        return KeyRing(db.engine, cache_seconds, access_ttl, publish_seconds=PUBLISH)


def states(app: Flask) -> dict[str, str]:
    with app.app_context():
        return {k.kid: k.state for k in list_keys(db.engine)}


def published(keyring: KeyRing) -> list[str]:
    return [jwk["kid"] for jwk in keyring.jwks()["keys"]]  # type: ignore[attr-defined]


def rotate_key(app: Flask, **options: Any) -> str:
    with app.app_context():
        rotation = rotate(db.engine, PLAIN, PUBLISH, **options)
    assert rotation is not None and rotation.made
    return rotation.kid


@pytest.fixture
def empty(app: Flask) -> Iterator[Flask]:
    """The app, on a database with no signing key at all."""
    with app.app_context():
        db.session.execute(delete(SigningKey))
        db.session.commit()
    yield app


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(time.time(), tick=False) as traveller:
        yield traveller


def test_first_key_is_made_on_demand(empty: Flask) -> None:
    key = ring(empty).signing_key()
    assert key.is_private
    assert states(empty) == {key.kid: "current"}
    # A second worker finds it rather than making its own.
    assert ring(empty).signing_key().kid == key.kid


def test_many_workers_starting_at_once_on_an_empty_database_make_one_current_key(
    empty: Flask,
) -> None:
    workers = 8
    start = threading.Barrier(workers)
    kids: list[str] = []

    def boot() -> None:
        keyring = ring(empty)  # each its own cache, as separate processes have
        start.wait()
        kids.append(str(keyring.signing_key().kid))

    threads = [threading.Thread(target=boot) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == workers
    assert len(set(kids)) == 1
    assert list(states(empty).values()) == ["current"]


def test_the_database_refuses_a_second_current_or_next_key(app: Flask) -> None:
    ring(app).signing_key()
    rotate_key(app)
    for state in ("current", "next"):
        with app.app_context(), pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(
                insert(SigningKey.__table__).values(
                    kid=f"extra-{state}",
                    private_key="",
                    public_jwk="{}",
                    state=state,
                    created_at=utcnow(),
                )
            )


def test_rotation_publishes_the_next_key_at_once_and_signs_with_it_only_later(
    app: Flask, clock: Any
) -> None:
    old = ring(app).signing_key().kid
    new = rotate_key(app)
    assert states(app)[new] == "next"
    keyring = ring(app, cache_seconds=0)  # reloads on every use (monotonic time is not frozen)
    assert set(published(keyring)) >= {old, new}
    assert keyring.signing_key().kid == old
    clock.shift(PUBLISH - 2)
    assert keyring.signing_key().kid == old  # reloaded, but not yet due
    clock.shift(3)
    assert keyring.signing_key().kid == new  # this worker saw it due and promoted it
    assert states(app)[new] == "current"
    assert states(app)[old] == "retired"
    assert set(published(keyring)) >= {old, new}
    assert keyring.verification_key(old) is not None


def test_rotating_again_keeps_the_pending_key(app: Flask) -> None:
    ring(app).signing_key()
    pending = rotate_key(app)
    with app.app_context():
        again = rotate(db.engine, PLAIN, PUBLISH)
    assert again is not None
    assert (again.kid, again.made) == (pending, False)
    assert list(states(app).values()).count("next") == 1


def test_rotate_now_signs_at_once_and_drops_the_pending_key(app: Flask) -> None:
    old = ring(app).signing_key().kid
    pending = rotate_key(app)
    new = rotate_key(app, now=True)
    after = states(app)
    assert (after[old], after[pending], after[new]) == ("retired", "retired", "current")
    assert ring(app).signing_key().kid == new


def test_rotate_if_older_than_only_rotates_an_old_key(app: Flask, clock: Any) -> None:
    ring(app).signing_key()
    with app.app_context():
        assert rotate(db.engine, PLAIN, PUBLISH, if_older_than=timedelta(days=30)) is None
    clock.shift(timedelta(days=31))
    new = rotate_key(app, if_older_than=timedelta(days=30))
    with app.app_context():
        # Run again on another node in the same minute: the pending key stands alone.
        again = rotate(db.engine, PLAIN, PUBLISH, if_older_than=timedelta(days=30))
    assert again is not None and (again.kid, again.made) == (new, False)


def test_concurrent_promoters_make_exactly_one_current_key(app: Flask, clock: Any) -> None:
    old = ring(app).signing_key().kid
    new = rotate_key(app)
    clock.shift(PUBLISH + 1)
    workers = 6
    start = threading.Barrier(workers)
    results: list[bool] = []

    def promote() -> None:
        with app.app_context():
            engine = db.engine
        start.wait()
        results.append(promote_due(engine, PUBLISH))

    threads = [threading.Thread(target=promote) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * (workers - 1) + [True]
    assert states(app)[new] == "current"
    assert states(app)[old] == "retired"


def test_a_retired_or_revoked_key_keeps_no_private_part(app: Flask) -> None:
    old = ring(app).signing_key().kid
    new = rotate_key(app, now=True)
    with app.app_context():
        revoke(db.engine, PLAIN, new)
        stored = dict(db.session.execute(select(SigningKey.kid, SigningKey.private_key)).all())
    assert stored[old] == ""
    assert stored[new] == ""


def test_revoked_key_leaves_the_jwks_and_its_tokens_die_at_once(
    app: Flask, actions: Actions, make_app: Any
) -> None:
    login = actions.login("alice")
    token = login["access_token"]
    kid = header_of(token)["kid"]
    keyring = app.extensions["tokenserver.keyring"]
    assert kid in published(keyring)
    with app.app_context():
        replacement = revoke(db.engine, PLAIN, kid)
    assert replacement is not None and replacement != kid
    # This worker's cache still holds the key, yet the token is refused at once.
    assert keyring.verification_key(kid) is not None
    response = actions.client.get("/users/me", headers=Actions.bearer(token))
    assert response.status_code == 401
    introspected = actions.client.post(
        "/oauth/introspect", data={"token": token}, auth=login["client"].auth
    )
    assert introspected.json == {"active": False}
    fresh = ring(app)
    assert kid not in published(fresh)
    assert fresh.verification_key(kid) is None
    assert fresh.signing_key().kid == replacement
    # A worker whose cache has not yet seen the revocation still signs with the key for a few
    # seconds: those tokens are dead too.
    stale = actions.token(login["client"]).json["access_token"]
    assert header_of(stale)["kid"] == kid
    assert actions.client.get("/users/me", headers=Actions.bearer(stale)).status_code == 401
    elsewhere = make_app()
    again = Actions(elsewhere, elsewhere.test_client()).token(login["client"]).json
    assert header_of(again["access_token"])["kid"] == replacement
    assert (
        actions.client.get("/users/me", headers=Actions.bearer(again["access_token"])).status_code
        == 200
    )


def test_a_revoked_key_cannot_vouch_for_a_live_token_signed_by_another(
    app: Flask, actions: Actions, make_app: Any
) -> None:
    # Whoever leaked the key re-signs, under its kid, wider claims with the jti of a live token
    # that the replacement key signed. A worker still caching the revoked key must refuse it.
    login = actions.login("alice")
    kid = header_of(login["access_token"])["kid"]
    keyring = app.extensions["tokenserver.keyring"]
    leaked = keyring.signing_key()
    with app.app_context():
        replacement = revoke(db.engine, PLAIN, kid)
    elsewhere = make_app()
    live = Actions(elsewhere, elsewhere.test_client()).token(login["client"]).json["access_token"]
    assert header_of(live)["kid"] == replacement
    claims = {**claims_of(live), "scope": "junk:read junk:write", "exp": int(time.time()) + 3600}
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
    forged = jws.serialize_compact(header, json.dumps(claims), leaked, algorithms=["RS256"])
    assert keyring.verification_key(kid) is not None  # within this worker's cache window
    assert actions.client.get("/users/me", headers=Actions.bearer(forged)).status_code == 401
    introspected = actions.client.post(
        "/oauth/introspect", data={"token": forged}, auth=login["client"].auth
    )
    assert introspected.json == {"active": False}
    # Nor does it reach that token's record to revoke it (RFC 7009 answers 200 either way).
    revoked = actions.client.post(
        "/oauth/revoke", data={"token": forged}, auth=login["client"].auth
    )
    assert revoked.status_code == 200
    # The token whose jti it borrowed is untouched.
    assert actions.client.get("/users/me", headers=Actions.bearer(live)).status_code == 200


def test_a_token_verified_before_its_key_was_withdrawn_is_refused_after(
    app: Flask, actions: Actions
) -> None:
    token = actions.login("alice")["access_token"]
    kid = header_of(token)["kid"]
    keyring = ring(app, cache_seconds=0)  # a worker whose key cache window has just passed
    with app.app_context():
        settings = current_settings()
        # Now in the worker's cache of verified tokens.
        verify_access_token(token, keyring, settings.issuer, settings.audience)
        revoke(db.engine, PLAIN, kid)
        assert keyring.verification_key(kid) is None
        with pytest.raises(TokenRejected):
            verify_access_token(token, keyring, settings.issuer, settings.audience)


def test_revoking_the_current_key_promotes_the_pending_one(app: Flask) -> None:
    old = ring(app).signing_key().kid
    pending = rotate_key(app)
    with app.app_context():
        assert revoke(db.engine, PLAIN, old) == pending
    assert states(app)[pending] == "current"
    assert states(app)[old] == "revoked"


def test_jwks_never_shows_private_parts(app: Flask) -> None:
    ring(app).signing_key()
    rotate_key(app)
    keys = ring(app).jwks()["keys"]
    assert len(keys) >= 2  # type: ignore[arg-type]
    for jwk in keys:  # type: ignore[attr-defined]
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert jwk["kty"] == "RSA"
        assert jwk["use"] == "sig"
        assert jwk["alg"] == "RS256"
        assert {"kid", "n", "e"} <= set(jwk)


def test_verification_keys_are_public_only(app: Flask) -> None:
    keyring = ring(app)
    kid = keyring.signing_key().kid
    rotate_key(app, now=True)
    assert keyring.verification_key(kid) is not None
    assert not ring(app).verification_key(kid).is_private  # type: ignore[union-attr]


def test_retired_key_is_dropped_once_its_tokens_have_expired(app: Flask, clock: Any) -> None:
    old = ring(app, cache_seconds=5).signing_key().kid
    rotate_key(app, now=True)
    # The longest token's life, plus a stale worker's cache, plus (most of) the skew grace.
    clock.shift(900 + 5 + 59)
    assert ring(app, cache_seconds=5).verification_key(old) is not None
    clock.shift(2)
    later = ring(app, cache_seconds=5)
    assert later.verification_key(old) is None
    assert old not in published(later)


def test_unknown_kid_reloads_the_cache_at_once(app: Flask) -> None:
    # A worker whose cache predates a rotation elsewhere still verifies the new key's tokens.
    keyring = ring(app, cache_seconds=3600)
    old = keyring.signing_key().kid
    new = rotate_key(app, now=True)
    assert keyring.signing_key().kid == old  # still cached: it signs with what it knows
    assert keyring.verification_key(new) is not None
    assert keyring.signing_key().kid == new  # the miss refreshed everything
    assert keyring.verification_key("no-such-kid") is None


def test_jwks_is_cacheable_for_less_than_the_publish_delay(make_app: Any) -> None:
    from tokenserver.config import JWKS_MAX_AGE, Settings

    app = make_app()
    response = app.test_client().get("/.well-known/jwks.json")
    assert response.headers["Cache-Control"] == f"public, max-age={JWKS_MAX_AGE}"
    settings = Settings.from_env({"TOKENSERVER_KEY_CACHE_SECONDS": "7"})
    assert settings.key_publish_seconds == JWKS_MAX_AGE + 7
    assert Settings.from_env({"TOKENSERVER_KEY_PUBLISH_SECONDS": "0"}).key_publish_seconds == 0


def test_jwks_max_age_never_outlasts_a_shorter_publish_delay(make_app: Any) -> None:
    # A verifier may hold the JWKS for its max-age after our key cache served it: a key that
    # signs sooner than that would meet verifiers whose cached set lacks its kid.
    for publish, cache in ((10, 5), (30, 1), (3, 5), (0, 1)):
        app = make_app(key_publish_seconds=publish, key_cache_seconds=cache)
        response = app.test_client().get("/.well-known/jwks.json")
        scope, _, max_age = response.headers["Cache-Control"].partition(", max-age=")
        assert scope == "public"
        assert int(max_age) + cache <= publish or int(max_age) == 0, (publish, cache)


def test_new_tokens_carry_the_new_kid_after_rotation(make_app: Any) -> None:
    first_app = make_app()
    actions = Actions(first_app, first_app.test_client())
    actions.login("alice")
    old_token = actions.token(actions.oauth_client("again")).json["access_token"]
    new_kid = rotate_key(first_app, now=True)
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


def test_a_live_token_re_signed_under_another_key_we_hold_is_refused(
    app: Flask, actions: Actions
) -> None:
    # The same claims and header under the published next key's kid, signed with its private
    # part: the jti of a live token must vouch only for the token recorded, under its own key.
    login = actions.login("alice")
    token = login["access_token"]
    pending = rotate_key(app)
    key = ring(app).private_key(pending)
    assert key is not None and pending != header_of(token)["kid"]
    header = {**header_of(token), "kid": pending}
    assert header["typ"] == "at+jwt"
    resigned = jws.serialize_compact(
        header, json.dumps(claims_of(token)), key, algorithms=[header["alg"]]
    )
    assert actions.client.get("/users/me", headers=Actions.bearer(resigned)).status_code == 401
    introspected = actions.client.post(
        "/oauth/introspect", data={"token": resigned}, auth=login["client"].auth
    )
    assert introspected.json == {"active": False}
    assert actions.client.get("/users/me", headers=Actions.bearer(token)).status_code == 200


def test_an_id_tokens_kid_names_the_key_that_signs_it_when_the_ring_moves_on(app: Flask) -> None:
    # Authlib asks for the header's kid and for the signing key in two calls; a worker whose
    # key cache runs out between them (here: at once) meets a rotation in between.
    with app.app_context():
        app.extensions["tokenserver.keyring"] = ring(app, cache_seconds=0)
    with app.test_request_context("/oauth/token", method="POST"):
        id_token = IdToken()
        header = id_token.get_encode_header(None)
        new_kid = rotate_key(app, now=True)
        assert new_kid != header["kid"]
        assert id_token.resolve_client_private_key(None).kid == header["kid"]
    with app.test_request_context("/oauth/token", method="POST"):
        # The next request's id_token is signed, and named, with the new key.
        assert IdToken().get_encode_header(None)["kid"] == new_kid
        assert IdToken().resolve_client_private_key(None).kid == new_kid
