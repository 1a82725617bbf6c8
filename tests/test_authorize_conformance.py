"""/oauth/authorize against RFC 6749 §3.1 and §4.1, RFC 8252 §7.3, RFC 9207 and OpenID Connect
Core §3.1.2 and §6: what is refused, how, and that a refusal issues nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt as pyjwt
import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import Actions
from .helpers import LOOPBACK, REDIRECT, Flow, authorization_request, csrf_of, pkce, query_of

ISSUER = "http://localhost:8000"


def _request(client_id: str, **params: str) -> dict[str, str]:
    return authorization_request(client_id, pkce()[1], **{"scope": "openid profile", **params})


def _ask_signed_in(flow: Flow, **params: str) -> Any:
    """An authorization request of a new first-party client, from a signed-in browser."""
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    return flow.client.get("/oauth/authorize?" + urlencode(_request(client_id, **params)))


def _error_back(response: Any) -> dict[str, str]:
    """The error the client hears at its redirect URI, with state and iss (RFC 9207)."""
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    query = query_of(location)
    assert "code" not in query
    assert query["state"] == "st-1" and query["iss"] == ISSUER and query["error_description"]
    return query


@pytest.mark.parametrize(
    "name", ["nonce", "prompt", "max_age", "login_hint", "response_mode", "dpop_jkt"]
)
def test_a_parameter_given_twice_is_invalid_request(flow: Flow, name: str) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    query = urlencode(_request(client_id)) + f"&{name}=1&{name}=2"
    response = flow.client.get("/oauth/authorize?" + query)
    assert _error_back(response)["error"] == "invalid_request"


def test_resource_may_be_given_more_than_once(flow: Flow) -> None:
    client_id, _secret = flow.register(
        first_party=True, audiences=("https://a.example", "https://b.example")
    )
    flow.login()
    query = (
        urlencode(_request(client_id)) + "&resource=https://a.example&resource=https://b.example"
    )
    response = flow.client.get("/oauth/authorize?" + query)
    assert "code" in query_of(response.headers["Location"])


@pytest.mark.parametrize("name", ["client_id", "redirect_uri", "response_type"])
def test_a_client_or_redirect_parameter_given_twice_is_a_page_never_a_redirect(
    flow: Flow, name: str
) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    query = urlencode(_request(client_id)) + f"&{name}=https://evil.example/cb"
    response = flow.client.get("/oauth/authorize?" + query)
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.mimetype == "text/html"


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("request", "eyJhbGciOiJub25lIn0.e30.", "request_not_supported"),
        ("request_uri", "https://app.example.com/request.jwt", "request_uri_not_supported"),
        ("registration", "{}", "registration_not_supported"),
    ],
)
def test_request_objects_and_registration_are_refused_not_ignored(
    flow: Flow, name: str, value: str, error: str
) -> None:
    response = _ask_signed_in(flow, **{name: value})
    assert _error_back(response)["error"] == error


@pytest.mark.parametrize("mode", ["fragment", "form_post", "query.jwt", "bogus"])
def test_a_response_mode_other_than_query_is_refused(flow: Flow, mode: str) -> None:
    response = _ask_signed_in(flow, response_mode=mode)
    assert _error_back(response)["error"] == "invalid_request"


def test_response_mode_query_is_accepted(flow: Flow) -> None:
    response = _ask_signed_in(flow, response_mode="query")
    assert "code" in query_of(response.headers["Location"])


@pytest.mark.parametrize("response_type", ["code id_token", "token", "id_token", "code token"])
def test_other_response_types_are_refused_in_our_words(flow: Flow, response_type: str) -> None:
    response = _ask_signed_in(flow, response_type=response_type)
    query = _error_back(response)
    assert query["error"] == "unsupported_response_type"
    assert query["error_description"] != response_type  # says what is supported, not an echo


@pytest.mark.parametrize("response_type", [None, ""])
def test_a_missing_response_type_is_invalid_request(flow: Flow, response_type: str | None) -> None:
    # RFC 6749 §4.1.2.1: a missing parameter is invalid_request (§3.1: an empty one is
    # missing); unsupported_response_type would tell the client its response_type is wrong.
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    query = authorization_request(client_id, pkce()[1], response_type=response_type)
    response = flow.client.get("/oauth/authorize?" + urlencode(query))
    back = _error_back(response)
    assert back["error"] == "invalid_request"
    assert "response_type" in back["error_description"]


@pytest.mark.parametrize("max_age", ["abc", "-1", "1e3", "9" * 30, "\u0665"])
def test_a_max_age_that_is_not_a_small_whole_number_is_invalid_request(
    flow: Flow, max_age: str
) -> None:
    response = _ask_signed_in(flow, max_age=max_age)
    assert _error_back(response)["error"] == "invalid_request"


def test_a_large_max_age_keeps_a_fresh_session(flow: Flow) -> None:
    response = _ask_signed_in(flow, max_age="9999999999")
    assert "code" in query_of(response.headers["Location"])


def test_an_error_without_state_still_names_the_issuer(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    params = _request(client_id, response_mode="fragment")
    del params["state"]
    response = flow.client.get("/oauth/authorize?" + urlencode(params))
    query = query_of(response.headers["Location"])
    assert query["error"] == "invalid_request" and query["iss"] == ISSUER
    assert "state" not in query


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000@evil.example/callback",  # userinfo: the browser goes to evil
        "http://127.0.0.1:5000\\@evil.example/callback",
        "http://127.0.0.1@evil.example/callback",
        "http://127.0.0.1:/callback",
        "http://127.0.0.1:5000/callback?",
        "HTTP://127.0.0.1:5000/callback",
        "http://127.0.0.1:65536/callback",
        "http://localhost:5000/callback",
    ],
)
def test_a_loopback_redirect_uri_may_change_its_port_and_nothing_else(flow: Flow, uri: str) -> None:
    client_id, _secret = flow.register(LOOPBACK, public=True, first_party=True)
    flow.login()
    response = flow.client.get(
        "/oauth/authorize?" + urlencode(_request(client_id, redirect_uri=uri))
    )
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil@app.example.com/callback",
        "https://app.example.com/callback#x",
        "HTTPS://app.example.com/callback",
        "https://app.example.com/x/../callback",
        "https://app.example.com/callback/..",
    ],
)
def test_a_redirect_uri_must_match_exactly(flow: Flow, uri: str) -> None:
    response = _ask_signed_in(flow, redirect_uri=uri)
    assert response.status_code == 400 and "Location" not in response.headers


def test_the_error_page_shows_nothing_the_request_said(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    uri = "https://app.example.com/<script>alert(1)</script>"
    response = flow.client.get(
        "/oauth/authorize?" + urlencode(_request(client_id, redirect_uri=uri))
    )
    assert response.status_code == 400
    assert "<script>" not in response.text and "alert(1)" not in response.text


def test_discovery_says_request_uri_is_not_supported(client: FlaskClient) -> None:
    # OpenID Connect Discovery §3: left out, request_uri_parameter_supported means true.
    body = client.get("/.well-known/openid-configuration").json
    assert body["request_uri_parameter_supported"] is False
    assert body["request_parameter_supported"] is False
    assert body["prompt_values_supported"] == ["none", "login", "consent", "select_account"]


@pytest.mark.parametrize("params", [{"max_age": "0"}, {"prompt": "login"}])
def test_forced_sign_in_asks_once_then_issues_a_code(flow: Flow, params: dict[str, str]) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    asked = flow.client.get("/oauth/authorize?" + urlencode(_request(client_id, **params)))
    assert asked.headers["Location"].startswith("/login?")
    signed_in = flow.login(next=query_of(asked.headers["Location"])["next"])
    back = flow.client.get(signed_in.headers["Location"])
    assert "code" in query_of(back.headers["Location"]), back.headers["Location"]


_FORCED = [{"prompt": "login"}, {"prompt": "select_account"}, {"max_age": "0"}]


def _way_back(flow: Flow, client_id: str, **params: str) -> str:
    """The `next` a forced sign-in sends a signed-in browser to /login with."""
    asked = flow.client.get("/oauth/authorize?" + urlencode(_request(client_id, **params)))
    assert asked.headers["Location"].startswith("/login?")
    return query_of(asked.headers["Location"])["next"]


@pytest.mark.parametrize("params", _FORCED)
def test_a_forced_sign_in_cannot_be_skipped_by_opening_the_way_back(
    flow: Flow, params: dict[str, str]
) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()  # before the request: someone at this browser who does not know the password
    skipped = flow.client.get(_way_back(flow, client_id, **params))
    assert skipped.headers["Location"].startswith("/login?")
    assert "code" not in query_of(skipped.headers["Location"])


@pytest.mark.parametrize("params", _FORCED)
def test_a_forced_sign_in_cannot_be_skipped_through_the_consent_page(
    flow: Flow, params: dict[str, str]
) -> None:
    client_id, _secret = flow.register()
    flow.login()
    back = _way_back(flow, client_id, **params)
    consent = back.replace("/oauth/authorize?", "/consent?", 1)
    assert flow.client.get(consent).headers["Location"].startswith("/login?")
    page = flow.client.get("/consent?" + urlencode(_request(client_id)))
    form = {"csrf_token": csrf_of(page.text), "decision": "allow"}
    posted = flow.client.post(consent, data=form)
    assert posted.headers["Location"].startswith("/login?")


def test_a_forced_sign_in_then_consent_issues_a_code(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    back = _way_back(flow, client_id, prompt="login")
    flow.login(next=back)
    consent = flow.client.get(back).headers["Location"]
    assert consent.startswith("/consent?")
    assert "code" in query_of(flow.consent(consent).headers["Location"])


def test_the_consent_page_gets_its_own_minutes_after_a_slow_forced_sign_in(flow: Flow) -> None:
    # Four minutes on the login form, then two on the consent page: six minutes from the
    # request, but the stamp the consent page carries counts from the sign-in.
    client_id, _secret = flow.register()
    flow.login()
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        back = _way_back(flow, client_id, prompt="login")
    with time_machine.travel(start + timedelta(minutes=4), tick=False):
        flow.login(next=back)
        consent = flow.client.get(back).headers["Location"]
        assert consent.startswith("/consent?")
    with time_machine.travel(start + timedelta(minutes=6), tick=False):
        assert "code" in query_of(flow.consent(consent).headers["Location"])
    # Its window is five minutes from the sign-in, as the login form's is from the request.
    with time_machine.travel(start + timedelta(minutes=10), tick=False):
        assert flow.client.get(consent).headers["Location"].startswith("/login?")


def _tampered(back: str, how: str) -> str:
    path, _, query = back.partition("?")
    params = [(k, v) for k, v in parse_qsl(query) if how != "missing" or k != "login_after"]
    micros, mac, kid = dict(params).get("login_after", "..").split(".")
    if how == "mac":
        forged = f"{micros}.{mac[:-2] + ('AA' if mac[-2:] != 'AA' else 'BB')}.{kid}"
        params = [(k, forged if k == "login_after" else v) for k, v in params]
    if how == "time":  # a later moment, before which the old session would count as fresh
        later = f"{int(micros) + 10**9}.{mac}.{kid}"
        params = [(k, later if k == "login_after" else v) for k, v in params]
    if how == "other request":
        params = [(k, "another" if k == "state" else v) for k, v in params]
    return path + "?" + urlencode(params)


@pytest.mark.parametrize("how", ["missing", "mac", "time", "other request"])
def test_a_tampered_or_missing_stamp_sends_the_user_to_sign_in_again(flow: Flow, how: str) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    back = _way_back(flow, client_id, prompt="login")
    flow.login(next=back)  # a real sign-in after the request: only the stamp is wrong
    again = flow.client.get(_tampered(back, how))
    assert again.headers["Location"].startswith("/login?")


def test_a_stamp_too_old_to_vouch_sends_the_user_to_sign_in_again(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    with time_machine.travel(datetime.now(UTC) - timedelta(hours=1), tick=False):
        back = _way_back(flow, client_id, prompt="login")
    flow.login(next=back)  # after that stamp, but the stamp is an hour old
    assert flow.client.get(back).headers["Location"].startswith("/login?")


def test_prompt_none_with_max_age_zero_is_still_login_required(flow: Flow) -> None:
    response = _ask_signed_in(flow, prompt="none", max_age="0")
    assert _error_back(response)["error"] == "login_required"


@pytest.mark.parametrize("prompt", ["bogus", "login bogus", "none none2"])
def test_an_unknown_prompt_value_is_invalid_request(flow: Flow, prompt: str) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    response = flow.client.get("/oauth/authorize?" + urlencode(_request(client_id, prompt=prompt)))
    assert _error_back(response)["error"] == "invalid_request"


def test_prompt_select_account_lets_the_user_sign_in_again(flow: Flow) -> None:
    # As Keycloak does: signing in again is how this server lets a user pick another account.
    response = _ask_signed_in(flow, prompt="select_account")
    assert response.headers["Location"].startswith("/login?")
    back = query_of(query_of(response.headers["Location"])["next"])
    assert back["prompt"] == "select_account" and back["login_after"]  # met by that sign-in


@pytest.mark.parametrize("prompt", ["none login", "none consent", "none select_account"])
def test_prompt_none_with_another_value_is_invalid_request_without_openid(
    flow: Flow, prompt: str
) -> None:
    response = _ask_signed_in(flow, scope="junk:read", prompt=prompt)
    assert _error_back(response)["error"] == "invalid_request"


def _id_token(app: Flask, client_id: str, secret: str | None, username: str) -> str:
    """An ID token for `username` from a browser of their own."""
    browser = Flow(app, app.test_client())
    browser.login(username=username)
    verifier, challenge = pkce()
    code = browser.code_for(client_id, challenge)
    body = browser.exchange(client_id, secret, code, verifier).json
    return str(body["id_token"])


def _foreign_id_token(claims: dict[str, Any]) -> str:
    key = RSAKey.generate_key(2048, parameters={"kid": "foreign"})
    return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": "foreign"}, claims, key)


def test_id_token_hint_of_the_signed_in_user_is_accepted_even_expired(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    hint = _id_token(flow.app, client_id, secret, "alice")
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2)):
        flow.login()
        response = flow.client.get(
            "/oauth/authorize?" + urlencode(_request(client_id, id_token_hint=hint, prompt="none"))
        )
    assert "code" in query_of(response.headers["Location"])


def test_id_token_hint_signed_by_a_key_rotated_out_since_is_accepted(
    make_app: Any, flow: Flow, runner: FlaskCliRunner
) -> None:
    # The app's ID token outlives the key's time in the JWKS; it still names the user.
    client_id, secret = flow.register(first_party=True)
    hint = _id_token(flow.app, client_id, secret, "alice")
    assert runner.invoke(args=["keys", "rotate", "--now"]).exit_code == 0
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2)):
        worker = make_app()  # started now: its key ring no longer holds the old key
        browser = Flow(worker, worker.test_client())
        published = browser.client.get("/.well-known/jwks.json").json["keys"]
        assert pyjwt.get_unverified_header(hint)["kid"] not in [key["kid"] for key in published]
        browser.login()
        params = _request(client_id, id_token_hint=hint, prompt="none")
        response = browser.client.get("/oauth/authorize?" + urlencode(params))
    assert "code" in query_of(response.headers["Location"])


def test_id_token_hint_signed_by_a_revoked_key_is_invalid_request(
    flow: Flow, runner: FlaskCliRunner
) -> None:
    client_id, secret = flow.register(first_party=True)
    hint = _id_token(flow.app, client_id, secret, "alice")
    kid = pyjwt.get_unverified_header(hint)["kid"]
    assert runner.invoke(args=["keys", "revoke", kid]).exit_code == 0
    flow.login()
    params = _request(client_id, id_token_hint=hint, prompt="none")
    response = flow.client.get("/oauth/authorize?" + urlencode(params))
    assert _error_back(response)["error"] == "invalid_request"


@pytest.mark.parametrize("prompt", [None, "none"])
def test_id_token_hint_of_another_user_is_login_required(
    flow: Flow, actions: Actions, prompt: str | None
) -> None:
    actions.user("bob")
    client_id, secret = flow.register(first_party=True)
    hint = _id_token(flow.app, client_id, secret, "bob")
    flow.login()
    params = _request(client_id, id_token_hint=hint, **({"prompt": prompt} if prompt else {}))
    response = flow.client.get("/oauth/authorize?" + urlencode(params))
    assert _error_back(response)["error"] == "login_required"


def test_a_hint_that_is_not_our_id_token_for_this_client_is_invalid_request(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    other, other_secret = flow.register(first_party=True)
    theirs = _id_token(flow.app, other, other_secret, "alice")
    flow.login()
    verifier, challenge = pkce()
    tokens = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    claims = pyjwt.decode(tokens["id_token"], options={"verify_signature": False})
    header, payload, _signature = tokens["id_token"].split(".")
    for hint in (
        "garbage",
        theirs,  # issued to another client
        tokens["access_token"],  # ours, but not an ID token
        _foreign_id_token(claims),  # the same claims, signed by someone else's key
        f"{header}.{payload}.",  # the signature taken off
        pyjwt.encode(claims, key=None, algorithm="none"),
    ):
        response = flow.client.get(
            "/oauth/authorize?" + urlencode(_request(client_id, id_token_hint=hint))
        )
        assert _error_back(response)["error"] == "invalid_request", hint


def test_the_consent_page_cannot_skip_a_required_sign_in(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    consent = "/consent?" + urlencode(_request(client_id))
    page = flow.client.get(consent)
    assert page.status_code == 200
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10)):
        stale = "/consent?" + urlencode(_request(client_id, max_age="60"))
        assert flow.client.get(stale).headers["Location"].startswith("/login?")
        form = {"csrf_token": csrf_of(page.text), "decision": "allow"}
        posted = flow.client.post(stale, data=form)
        assert posted.headers["Location"].startswith("/login?")


def test_the_consent_page_cannot_skip_the_hint_check(flow: Flow, actions: Actions) -> None:
    actions.user("bob")
    client_id, secret = flow.register()
    hint = _id_token(flow.app, client_id, secret, "bob")
    flow.login()
    consent = "/consent?" + urlencode(_request(client_id, id_token_hint=hint))
    page = flow.client.get("/consent?" + urlencode(_request(client_id)))
    form = {"csrf_token": csrf_of(page.text), "decision": "allow"}
    assert _error_back(flow.client.get(consent))["error"] == "login_required"
    assert _error_back(flow.client.post(consent, data=form))["error"] == "login_required"


@pytest.mark.parametrize("response_type", ["code", "token"])
def test_a_repeated_redirect_uri_is_a_page_whatever_the_response_type(
    flow: Flow, response_type: str
) -> None:
    client_id, _secret = flow.register(REDIRECT, "https://app.example.com/other")
    flow.login()
    params = _request(client_id, response_type=response_type)
    query = urlencode(params) + "&redirect_uri=" + "https://app.example.com/other"
    response = flow.client.get("/oauth/authorize?" + query)
    assert response.status_code == 400 and "Location" not in response.headers
