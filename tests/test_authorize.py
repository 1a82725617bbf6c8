"""The authorization code grant with PKCE and OpenID Connect, driven through the test client."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jwt as pyjwt
import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select, update

from tokenserver.browser_models import AuthorizationCode
from tokenserver.extensions import db
from tokenserver.models import TokenFamily
from tokenserver.oauth.codes import CODE_TTL

from .conftest import PASSWORD, Actions
from .helpers import (
    LOOPBACK,
    REDIRECT,
    Flow,
    authorization_request,
    csrf_of,
    pkce,
    query_of,
    verified,
)


def _claims(token: str) -> dict[str, Any]:
    return pyjwt.decode(token, options={"verify_signature": False})


def test_sign_in_consent_and_code_exchange_give_tokens_and_an_id_token(flow: Flow) -> None:
    client_id, secret = flow.register()
    verifier, challenge = pkce()
    first = flow.authorize(client_id, challenge, nonce="n-0S6")
    assert first.status_code == 302
    assert first.headers["Location"].startswith("/login?")
    signed_in = flow.login(next=query_of(first.headers["Location"])["next"])
    assert signed_in.status_code == 303
    back = flow.client.get(signed_in.headers["Location"])
    assert back.headers["Location"].startswith("/consent?")
    page = flow.client.get(back.headers["Location"])
    assert "Photo App" in page.text and "See your username" in page.text
    allowed = flow.consent(back.headers["Location"])
    assert allowed.status_code == 303  # answering a POST: the app's callback is fetched by GET
    query = query_of(allowed.headers["Location"])
    assert allowed.headers["Location"].startswith(REDIRECT + "?")
    assert query["state"] == "st-1" and query["iss"] == "http://localhost:8000"
    response = flow.exchange(client_id, secret, query["code"], verifier)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["refresh_token"] and body["scope"] == "openid profile junk:read"
    claims = _claims(body["id_token"])
    assert claims["iss"] == "http://localhost:8000" and claims["aud"] == client_id
    assert claims["nonce"] == "n-0S6" and claims["preferred_username"] == "alice"
    assert {"auth_time", "at_hash", "sid", "exp", "iat", "sub"} <= set(claims)
    info = flow.client.get("/oauth/userinfo", headers=Actions.bearer(body["access_token"]))
    assert info.json == {"sub": claims["sub"], "preferred_username": "alice"}


def test_consent_is_remembered_per_client_and_scope_set(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    _verifier, challenge = pkce()
    flow.code_for(client_id, challenge)  # asks, and is allowed
    again = flow.authorize(client_id, challenge)
    assert again.headers["Location"].startswith(REDIRECT)  # not asked twice
    wider = flow.authorize(client_id, challenge, scope="openid profile junk:read junk:write")
    assert wider.headers["Location"].startswith("/consent?")  # a new set of scopes: asked
    forced = flow.authorize(client_id, challenge, prompt="consent")
    assert forced.headers["Location"].startswith("/consent?")


def test_scopes_we_do_not_know_are_ignored_in_an_openid_request(flow: Flow) -> None:
    # OpenID Connect Core §3.1.2.1: many relying parties ask for "openid profile email".
    client_id, secret = flow.register()
    flow.login()
    verifier, challenge = pkce()
    asked = flow.authorize(client_id, challenge, scope="openid profile email offline_access")
    assert asked.headers["Location"].startswith("/consent?")
    page = flow.client.get(asked.headers["Location"])
    assert "<code>profile</code>" in page.text  # the list of scopes asked for
    assert "<code>email</code>" not in page.text and "<code>offline_access</code>" not in page.text
    code = query_of(flow.consent(asked.headers["Location"]).headers["Location"])["code"]
    body = flow.exchange(client_id, secret, code, verifier).json
    assert body["scope"] == "openid profile" and body["id_token"]
    assert _claims(body["access_token"])["scope"] == "openid profile"
    # What was allowed is what was granted: the same request, or one without the extras,
    # is not asked again.
    for scope in ("openid profile email", "openid profile"):
        again = flow.authorize(client_id, challenge, scope=scope)
        assert again.headers["Location"].startswith(REDIRECT + "?"), scope


@pytest.mark.parametrize(
    "scope",
    [
        "openid junk:write email",  # known, but not this client's: OpenID or not
        "junk:read email",  # no openid: plain OAuth, an unknown scope is invalid (RFC 6749)
    ],
)
def test_a_scope_the_client_may_not_have_is_still_invalid_scope(flow: Flow, scope: str) -> None:
    client_id, _secret = flow.register(scope="openid profile junk:read")
    flow.login()
    response = flow.authorize(client_id, pkce()[1], scope=scope)
    query = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith(REDIRECT + "?")
    assert query["error"] == "invalid_scope" and "code" not in query


API = "https://api.example.com"
PHOTOS = "https://photos.example.com"


def _authorize(flow: Flow, client_id: str, **params: str | list[str]) -> str:
    """Where an authorization request (signed in; `resource` may repeat) sends the browser."""
    query = urlencode(authorization_request(client_id, pkce()[1], **params), doseq=True)
    location: str = flow.client.get("/oauth/authorize?" + query).headers["Location"]
    assert location.startswith(("/consent?", REDIRECT + "?")), location
    return location


def _asks(flow: Flow, client_id: str, **params: str | list[str]) -> bool:
    """Whether this request goes to /consent rather than straight back with a code."""
    return _authorize(flow, client_id, **params).startswith("/consent?")


def _allow(flow: Flow, client_id: str, **params: str | list[str]) -> None:
    """Make the request and allow it at /consent."""
    allowed = flow.consent(_authorize(flow, client_id, **params))
    assert "code" in query_of(allowed.headers["Location"])


def test_consent_at_one_resource_is_asked_again_for_another(flow: Flow) -> None:
    client_id, _secret = flow.register(audiences=(API, PHOTOS))
    flow.login()
    _allow(flow, client_id, resource=API)  # asks, and is allowed there only
    assert not _asks(flow, client_id, resource=API)
    # Our own routes (no resource named) and another resource were never allowed.
    assert _asks(flow, client_id)
    assert _asks(flow, client_id, resource=PHOTOS)
    assert _asks(flow, client_id, resource=[API, PHOTOS])


def test_consent_at_resources_of_any_length_is_remembered(flow: Flow) -> None:
    # Audiences have no length cap: a set of long ones must not be keyed as it is (PostgreSQL
    # refuses an index entry past about 2.7 kB, and the answer would fail to save).
    audiences = tuple(f"https://api{i}.example/{secrets.token_hex(350)}" for i in range(5))
    client_id, _secret = flow.register(audiences=audiences)
    flow.login()
    _allow(flow, client_id, resource=list(audiences))
    assert not _asks(flow, client_id, resource=list(audiences))
    assert not _asks(flow, client_id, resource=audiences[0])
    assert _asks(flow, client_id)


def test_consent_covers_fewer_scopes_and_resources_but_answers_never_add_up(
    flow: Flow,
) -> None:
    client_id, _secret = flow.register(audiences=(API, PHOTOS))
    flow.login()
    _allow(flow, client_id, resource=[API, PHOTOS])
    assert not _asks(flow, client_id, resource=PHOTOS, scope="openid junk:read")
    assert _asks(flow, client_id, resource=PHOTOS, scope="openid junk:write")
    _allow(flow, client_id, resource=PHOTOS, scope="openid junk:write")
    # junk:read and junk:write were each allowed at PHOTOS, but never together.
    assert _asks(flow, client_id, resource=PHOTOS, scope="openid junk:read junk:write")


def test_naming_our_own_audience_is_the_same_consent_as_naming_none(flow: Flow) -> None:
    own = flow.app.extensions["tokenserver.settings"].audience
    first, _ = flow.register(name="First App")
    second, _ = flow.register(name="Second App")
    flow.login()
    _allow(flow, first)
    assert not _asks(flow, first, resource=own)
    _allow(flow, second, resource=own)
    assert not _asks(flow, second)


def test_signing_an_app_out_forgets_its_consents_at_every_resource(flow: Flow) -> None:
    client_id, _secret = flow.register(audiences=(API,))
    flow.login()
    _allow(flow, client_id)
    _allow(flow, client_id, resource=API)
    page = flow.client.get("/account")
    flow.client.post(
        "/account/apps/sign-out", data={"csrf_token": csrf_of(page.text), "client_id": client_id}
    )
    assert _asks(flow, client_id) and _asks(flow, client_id, resource=API)


def test_first_party_clients_skip_consent(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    response = flow.authorize(client_id, pkce()[1])
    assert "code" in query_of(response.headers["Location"])


def test_a_first_party_client_asking_prompt_consent_is_asked_about(flow: Flow) -> None:
    # OpenID Connect Core §3.1.2.1: prompt=consent SHOULD ask, whoever the app is.
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    asked = flow.authorize(client_id, challenge, prompt="consent")
    assert asked.headers["Location"].startswith("/consent?")
    assert "Photo App" in flow.client.get(asked.headers["Location"]).text
    code = query_of(flow.consent(asked.headers["Location"]).headers["Location"])["code"]
    assert flow.exchange(client_id, secret, code, verifier).status_code == 200
    denied = flow.consent(
        flow.authorize(client_id, challenge, prompt="consent").headers["Location"], "deny"
    )
    assert query_of(denied.headers["Location"])["error"] == "access_denied"


def test_denied_consent_tells_the_client_access_denied(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    asked = flow.authorize(client_id, pkce()[1])
    denied = flow.consent(asked.headers["Location"], "deny")
    assert denied.status_code == 303
    query = query_of(denied.headers["Location"])
    assert denied.headers["Location"].startswith(REDIRECT)
    assert query["error"] == "access_denied" and query["state"] == "st-1"
    assert query["iss"] == "http://localhost:8000" and "code" not in query


@pytest.mark.parametrize(
    "change, error",
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "junk:admin"}, "invalid_scope"),
        ({"nonce": "n" * 300}, "invalid_request"),
        ({"nonce": "bad\x00nonce"}, "invalid_request"),
    ],
)
def test_bad_authorization_requests_redirect_back_with_the_error(
    flow: Flow, change: dict[str, Any], error: str
) -> None:
    client_id, _secret = flow.register()
    flow.login()
    response = flow.authorize(client_id, pkce()[1], **change)
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith(REDIRECT)
    assert query["error"] == error and query["state"] == "st-1"
    assert query["iss"] == "http://localhost:8000" and query["error_description"]


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": REDIRECT + "/"},
        {"redirect_uri": REDIRECT + "?x=1"},
        {"redirect_uri": "https://app.example.com.evil.example/callback"},
        {"client_id": "no-such-client"},
        {"client_id": None},
        {"response_type": "\u00b5", "client_id": "\u008b"},
    ],
)
def test_unknown_client_or_redirect_uri_gets_a_page_never_a_redirect(
    flow: Flow, change: dict[str, Any]
) -> None:
    client_id, _secret = flow.register(REDIRECT, "https://app.example.com/other")
    flow.login()
    response = flow.authorize(client_id, pkce()[1], **change)
    assert response.status_code == 400
    assert response.mimetype == "text/html" and "Location" not in response.headers
    assert "evil" not in response.text or "not supported" in response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "name",
    [
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "prompt",
        "max_age",
        "login_hint",
        "id_token_hint",
        "response_mode",
        "ui_locales",
        "claims",
        "request",
        "request_uri",
        "resource",
        "dpop_jkt",
    ],
)
def test_a_parameter_sent_empty_is_answered_as_if_left_out(
    flow: Flow, name: str, method: str
) -> None:
    # RFC 6749 §3.1, OpenID Connect Core §3.1.2.1: "Parameters sent without a value MUST be
    # treated as if they were omitted from the request."
    client_id, _secret = flow.register()
    flow.login()
    challenge = pkce()[1]
    answers = []
    for value in (None, ""):
        query = authorization_request(client_id, challenge, **{"nonce": "n-1", name: value})
        if method == "GET":
            response = flow.client.get("/oauth/authorize?" + urlencode(query))
        else:
            response = flow.client.post("/oauth/authorize", data=query)
        answers.append((response.status_code, response.headers.get("Location"), response.text))
    assert answers[0] == answers[1]


def test_an_empty_nonce_or_redirect_uri_is_stored_as_left_out(flow: Flow, app: Flask) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge, nonce="", redirect_uri="")
    with app.app_context():
        stored = db.session.execute(select(AuthorizationCode.nonce, AuthorizationCode.redirect_uri))
        assert stored.one() == (None, None)
    exchanged = flow.exchange(client_id, secret, code, verifier, redirect_uri=None)
    assert exchanged.status_code == 200, exchanged.json
    assert "nonce" not in _claims(exchanged.json["id_token"])


def test_redirect_uri_may_be_left_out_only_when_one_is_registered(flow: Flow) -> None:
    one, _s = flow.register()
    two, _s = flow.register(REDIRECT, "https://app.example.com/other")
    flow.login()
    assert (
        flow.authorize(one, pkce()[1], redirect_uri=None).headers["Location"].startswith("/consent")
    )
    assert flow.authorize(two, pkce()[1], redirect_uri=None).status_code == 400


def test_loopback_redirect_matches_any_port_but_nothing_else(flow: Flow) -> None:
    client_id, _secret = flow.register(LOOPBACK, public=True, first_party=True)
    flow.login()
    ok = flow.authorize(client_id, pkce()[1], redirect_uri="http://127.0.0.1:53123/callback")
    assert ok.headers["Location"].startswith("http://127.0.0.1:53123/callback?code=")
    for bad in (
        "http://localhost:53123/callback",
        "http://127.0.0.1:53123/other",
        "https://127.0.0.1:53123/callback",
        "http://127.0.0.1:53123/callback?x=1",
    ):
        assert flow.authorize(client_id, pkce()[1], redirect_uri=bad).status_code == 400, bad


def test_prompt_none_without_a_session_is_login_required(flow: Flow) -> None:
    client_id, _secret = flow.register()
    response = flow.authorize(client_id, pkce()[1], prompt="none")
    query = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith(REDIRECT)
    assert query["error"] == "login_required" and query["state"] == "st-1"
    # Said as for max_age=0 with prompt=none, where the same answer has the same words.
    assert query["error_description"] == "The user is not signed in."


def test_prompt_none_without_consent_is_consent_required(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    response = flow.authorize(client_id, pkce()[1], prompt="none")
    assert query_of(response.headers["Location"])["error"] == "consent_required"


def test_prompt_login_and_max_age_ask_for_the_password_again(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    login = flow.authorize(client_id, pkce()[1], prompt="login")
    assert login.headers["Location"].startswith("/login?")
    back = query_of(login.headers["Location"])["next"]
    # The way back still asks, met by a sign-in after the stamp the server put on it.
    assert query_of(back)["prompt"] == "login" and query_of(back)["login_after"]
    with time_machine.travel(_later(120), tick=False):
        stale = flow.authorize(client_id, pkce()[1], max_age="60")
    assert stale.headers["Location"].startswith("/login?")
    fresh = flow.authorize(client_id, pkce()[1], max_age="3600")
    assert "code" in query_of(fresh.headers["Location"])


def test_login_hint_fills_in_the_username(flow: Flow) -> None:
    client_id, _secret = flow.register()
    response = flow.authorize(client_id, pkce()[1], login_hint="alice")
    page = flow.client.get(response.headers["Location"])
    assert 'value="alice"' in page.text


def _code_and_client(flow: Flow, public: bool = False) -> tuple[str, str | None, str, str]:
    client_id, secret = flow.register(public=public, first_party=True)
    flow.login()
    verifier, challenge = pkce()
    return client_id, secret, flow.code_for(client_id, challenge), verifier


@pytest.mark.parametrize(
    "change, error",
    [
        ({"code_verifier": None}, "invalid_request"),
        ({"code_verifier": secrets.token_urlsafe(48)}, "invalid_grant"),
        ({"redirect_uri": "https://app.example.com/other"}, "invalid_grant"),
        ({"code": "not-a-code"}, "invalid_grant"),
        # RFC 6749 §3.2: sent without a value is as if left out: a code bound to a redirect URI
        # still needs it, and an empty code is a missing one, not a wrong one.
        ({"redirect_uri": ""}, "invalid_grant"),
        ({"code_verifier": ""}, "invalid_request"),
        ({"code": ""}, "invalid_request"),
    ],
)
def test_code_exchange_refuses_a_wrong_verifier_redirect_or_code(
    flow: Flow, change: dict[str, Any], error: str
) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    extra = {k: v for k, v in change.items() if k != "code"}
    response = flow.exchange(client_id, secret, change.get("code", code), verifier, **extra)
    assert response.status_code == 400 and response.json["error"] == error


def test_public_client_exchanges_with_pkce_and_no_secret(flow: Flow) -> None:
    client_id, _secret, code, verifier = _code_and_client(flow, public=True)
    response = flow.exchange(client_id, None, code, verifier)
    assert response.status_code == 200 and "id_token" in response.json


def test_a_code_is_bound_to_its_client(flow: Flow) -> None:
    _client_id, _secret, code, verifier = _code_and_client(flow)
    other, other_secret = flow.register(first_party=True)
    response = flow.exchange(other, other_secret, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_reused_code_is_refused_and_revokes_what_it_issued(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    first = flow.exchange(client_id, secret, code, verifier)
    assert first.status_code == 200
    access = first.json["access_token"]
    assert flow.client.get("/oauth/userinfo", headers=Actions.bearer(access)).status_code == 200
    again = flow.exchange(client_id, secret, code, verifier)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    assert flow.client.get("/oauth/userinfo", headers=Actions.bearer(access)).status_code == 401
    refreshed = flow.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first.json["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"


def test_a_failed_exchange_leaves_the_code_to_the_client_with_the_verifier(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    guessed = flow.exchange(client_id, secret, code, secrets.token_urlsafe(48))
    assert guessed.status_code == 400 and guessed.json["error"] == "invalid_grant"
    assert flow.exchange(client_id, secret, code, verifier).status_code == 200


def test_concurrent_exchanges_of_one_code_issue_nothing_that_lives(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    barrier = threading.Barrier(4)

    def exchange(_: int) -> Any:
        barrier.wait()
        return Flow(flow.app, flow.app.test_client()).exchange(client_id, secret, code, verifier)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(exchange, range(4)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1
    assert all(r.json["error"] == "invalid_grant" for r in responses if r not in winners)
    # The losers were replays: what the winner got is revoked (RFC 6749 §4.1.2).
    access = winners[0].json["access_token"]
    assert flow.client.get("/oauth/userinfo", headers=Actions.bearer(access)).status_code == 401


def test_a_code_spent_between_lookup_and_exchange_is_spent_once(flow: Flow) -> None:
    from tokenserver.digests import digest
    from tokenserver.extensions import db
    from tokenserver.store import codes

    client_id, _secret, code, _verifier = _code_and_client(flow)
    with flow.app.app_context():
        first = codes.present(digest(code), client_id).code
        second = codes.present(digest(code), client_id).code
        assert first is not None and second is not None  # both looked before either spent
        with db.engine.begin() as conn:
            assert codes.spend(conn, first.code_hash, "f" * 32) == first.session_id
        with db.engine.begin() as conn:
            assert codes.spend(conn, second.code_hash, "e" * 32) is None
        again = codes.present(digest(code), client_id)
        assert again.code is None and again.replayed and again.family_id == "f" * 32


def test_code_expires_after_sixty_seconds(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    with time_machine.travel(_later(CODE_TTL + 1), tick=False):
        response = flow.exchange(client_id, secret, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_an_expired_code_is_refused_without_being_taken_for_a_replay(
    flow: Flow, events: Any
) -> None:
    # An app that was slow to exchange its code is no thief: its user's tokens must stand.
    client_id, secret, first, first_verifier = _code_and_client(flow)
    issued = flow.exchange(client_id, secret, first, first_verifier).json
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    with time_machine.travel(_later(CODE_TTL + 1), tick=False):
        response = flow.exchange(client_id, secret, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"
    assert events("code.reuse_detected") == []
    bearer = Actions.bearer(issued["access_token"])
    assert flow.client.get("/oauth/userinfo", headers=bearer).status_code == 200
    refreshed = flow.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 200


def test_a_user_disabled_after_sign_in_gets_no_tokens_for_the_code(
    flow: Flow, runner: FlaskCliRunner
) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    runner.invoke(args=["users", "disable", "alice"])
    response = flow.exchange(client_id, secret, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def _later(seconds: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_refresh_with_openid_returns_a_new_id_token(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    first = flow.exchange(client_id, secret, code, verifier).json
    refreshed = flow.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 200
    claims = _claims(refreshed.json["id_token"])
    assert claims["aud"] == client_id and claims["sub"] == _claims(first["id_token"])["sub"]


def _refresh(flow: Flow, client_id: str, secret: str | None, token: str) -> Any:
    return flow.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=(client_id, secret),
    )


def test_a_refreshed_id_token_keeps_the_sign_in_it_came_from(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    first = flow.exchange(client_id, secret, code, verifier).json
    signed_in = _claims(first["id_token"])
    with time_machine.travel(_later(2 * 3600), tick=False):
        flow.login()  # signed in anew since, in another browser session
        refreshed = _refresh(flow, client_id, secret, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.json
    claims = _claims(refreshed.json["id_token"])
    # OpenID Connect Core §12.2: when the user signed in, not when the app refreshed.
    assert claims["iat"] >= signed_in["iat"] + 2 * 3600
    assert claims["auth_time"] == signed_in["auth_time"]
    assert claims["sid"] == signed_in["sid"]
    assert "nonce" not in claims


def _at_hash(access_token: str) -> str:
    """OpenID Connect Core §3.1.3.6: the left half of the access token's SHA-256, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def test_id_tokens_verify_against_our_jwks_and_hash_their_access_token(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)  # no nonce in the request
    first = flow.exchange(client_id, secret, code, verifier).json
    refreshed = _refresh(flow, client_id, secret, first["refresh_token"]).json
    metadata = flow.client.get("/.well-known/openid-configuration").json
    for body in (first, refreshed):
        claims = verified(flow.client, body["id_token"], client_id)  # RS256, under a kid we publish
        assert claims["iss"] == metadata["issuer"]
        assert claims["at_hash"] == _at_hash(body["access_token"])
        assert "nonce" not in claims  # none was sent
        info = flow.client.get("/oauth/userinfo", headers=Actions.bearer(body["access_token"]))
        assert info.json["sub"] == claims["sub"]


def test_a_login_whose_sign_in_is_unknown_refreshes_without_auth_time(flow: Flow) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    first = flow.exchange(client_id, secret, code, verifier).json
    with flow.app.app_context(), db.engine.begin() as conn:  # as stored before logins kept it
        conn.execute(update(TokenFamily).values(auth_time=None, session_id=None))
    with time_machine.travel(_later(2 * 3600), tick=False):
        refreshed = _refresh(flow, client_id, secret, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.json
    claims = _claims(refreshed.json["id_token"])
    assert claims["sub"] == _claims(first["id_token"])["sub"]
    assert "auth_time" not in claims and "sid" not in claims  # never the refresh's time


def test_userinfo_answers_get_and_post_and_needs_openid(flow: Flow, actions: Actions) -> None:
    client_id, secret, code, verifier = _code_and_client(flow)
    token = flow.exchange(client_id, secret, code, verifier).json["access_token"]
    bearer = Actions.bearer(token)
    assert flow.client.get("/oauth/userinfo", headers=bearer).json["preferred_username"] == "alice"
    assert flow.client.post("/oauth/userinfo", headers=bearer).status_code == 200
    password_token = actions.token(actions.oauth_client("cli")).json["access_token"]
    refused = flow.client.get("/oauth/userinfo", headers=Actions.bearer(password_token))
    assert refused.status_code == 403 and refused.json["error"] == "insufficient_scope"
    assert flow.client.get("/oauth/userinfo").status_code == 401


def test_userinfo_takes_the_token_in_a_posted_form(flow: Flow, actions: Actions) -> None:
    # OpenID Connect Core §5.3.1 lets a client send it as RFC 6750 §2 allows: §2.2, a form body.
    client_id, secret, code, verifier = _code_and_client(flow)
    token = flow.exchange(client_id, secret, code, verifier).json["access_token"]
    info = flow.client.post("/oauth/userinfo", data={"access_token": token})
    assert info.status_code == 200 and info.json["preferred_username"] == "alice"
    # Never in a GET's query (§2.3 is not offered), never beside a header or twice (§2).
    assert (
        flow.client.get("/oauth/userinfo", query_string={"access_token": token}).status_code == 401
    )
    twice = flow.client.post(
        "/oauth/userinfo", data={"access_token": token}, headers=Actions.bearer(token)
    )
    assert twice.status_code == 400 and twice.json["error"] == "invalid_request"
    doubled = flow.client.post("/oauth/userinfo", data={"access_token": [token, token]})
    assert doubled.status_code == 400 and doubled.json["error"] == "invalid_request"
    # One sent without a value is as if left out: the header's token counts, or there is none.
    empty = {"access_token": ""}
    beside = flow.client.post("/oauth/userinfo", data=empty, headers=Actions.bearer(token))
    assert beside.status_code == 200 and beside.json["preferred_username"] == "alice"
    alone = flow.client.post("/oauth/userinfo", data=empty)
    assert alone.status_code == 401 and "error" not in alone.headers["WWW-Authenticate"]
    # A JSON body is not a form: no token read from it.
    as_json = flow.client.post("/oauth/userinfo", json={"access_token": token})
    assert as_json.status_code == 401
    # The checks of a header's token hold: forged, and without openid.
    forged = flow.client.post("/oauth/userinfo", data={"access_token": token[:-4] + "AAAA"})
    assert forged.status_code == 401 and forged.json["error"] == "invalid_token"
    password_token = actions.token(actions.oauth_client("cli")).json["access_token"]
    refused = flow.client.post("/oauth/userinfo", data={"access_token": password_token})
    assert refused.status_code == 403 and refused.json["error"] == "insufficient_scope"


def test_openid_configuration_lists_what_rfc8414_metadata_lists(client: FlaskClient) -> None:
    oidc = client.get("/.well-known/openid-configuration").json
    assert oidc == client.get("/.well-known/oauth-authorization-server").json
    assert oidc["userinfo_endpoint"] == "http://localhost:8000/oauth/userinfo"
    assert oidc["end_session_endpoint"] == "http://localhost:8000/oauth/logout"
    assert oidc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert oidc["subject_types_supported"] == ["public"]


def test_password_grant_can_be_turned_off(make_app: Any, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    app = make_app(password_grant=False)
    client = app.test_client()
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    response = client.post("/oauth/token", data=data, auth=oauth_client.auth)
    assert response.status_code == 400 and response.json["error"] == "unsupported_grant_type"
    metadata = client.get("/.well-known/oauth-authorization-server").json
    assert "password" not in metadata["grant_types_supported"]
