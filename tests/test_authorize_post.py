"""/oauth/authorize by POST (OpenID Connect Core §3.1.2.1): the form body is the request, checked
and answered as a GET's query is, and every redirect after it is a 303."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask

from .helpers import REDIRECT, Flow, authorization_request, pkce, query_of

ISSUER = "http://localhost:8000"


def _request(client_id: str, challenge: str, **params: str) -> dict[str, str]:
    defaults = {"scope": "openid profile", "nonce": "n-1"}
    return authorization_request(client_id, challenge, **{**defaults, **params})


def _post(flow: Flow, body: dict[str, str] | str, query: str = "") -> Any:
    path = "/oauth/authorize" + (f"?{query}" if query else "")
    return flow.client.post(path, data=body, content_type="application/x-www-form-urlencoded")


def _code_back(response: Any) -> str:
    assert response.status_code == 303, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    query = query_of(location)
    assert query["state"] == "st-1" and query["iss"] == ISSUER
    return query["code"]


def test_a_signed_in_user_gets_a_code_that_exchanges_for_an_id_token(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    code = _code_back(_post(flow, _request(client_id, challenge)))
    tokens = flow.exchange(client_id, secret, code, verifier)
    assert tokens.status_code == 200, tokens.json
    assert tokens.json["id_token"] and tokens.json["scope"] == "openid profile"


def test_without_a_session_the_request_becomes_a_get_then_the_sign_in(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    verifier, challenge = pkce()
    params = _request(client_id, challenge, state="a b&c=d/é")
    posted = _post(flow, params)
    # A cross-site POST carries no SameSite=Lax cookie: the session is judged on the GET.
    assert posted.status_code == 303
    get = posted.headers["Location"]
    assert get.startswith("/oauth/authorize?") and query_of(get) == params
    to_login = flow.client.get(get)
    assert to_login.headers["Location"].startswith("/login?")
    back = query_of(to_login.headers["Location"])["next"]
    assert query_of(back) == params
    signed_in = flow.login(next=back)
    assert signed_in.headers["Location"] == back
    done = flow.client.get(back)
    assert "code" in query_of(done.headers["Location"])


def test_prompt_login_sends_the_posted_request_to_sign_in_and_back(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    params = _request(client_id, pkce()[1], prompt="login", login_hint="alice")
    response = _post(flow, params)
    assert response.status_code == 303
    login = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith("/login?") and login["login_hint"] == "alice"
    back = query_of(login["next"])
    assert back["prompt"] == "login" and back["code_challenge"] == params["code_challenge"]


def test_consent_is_asked_with_the_posted_parameters(flow: Flow) -> None:
    client_id, secret = flow.register()
    flow.login()
    verifier, challenge = pkce()
    params = _request(client_id, challenge)
    response = _post(flow, params)
    assert response.status_code == 303
    asked = response.headers["Location"]
    assert asked.startswith("/consent?") and query_of(asked) == params
    allowed = flow.consent(asked)
    code = query_of(allowed.headers["Location"])["code"]
    assert flow.exchange(client_id, secret, code, verifier).status_code == 200


def test_prompt_none_without_consent_is_consent_required(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    response = _post(flow, _request(client_id, pkce()[1], prompt="none"))
    assert response.status_code == 303
    query = query_of(response.headers["Location"])
    assert query["error"] == "consent_required" and query["state"] == "st-1"


def test_prompt_none_without_a_session_is_login_required_on_the_get(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    posted = _post(flow, _request(client_id, pkce()[1], prompt="none"))
    response = flow.client.get(posted.headers["Location"])
    assert response.headers["Location"].startswith(REDIRECT)
    assert query_of(response.headers["Location"])["error"] == "login_required"


@pytest.mark.parametrize("signed_in", [True, False])
@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://evil.example/callback"},
        {"client_id": "no-such-client"},
        {"redirect_uri": REDIRECT + "/../evil"},
    ],
)
def test_an_unverified_client_or_redirect_uri_is_a_page_never_a_redirect(
    flow: Flow, change: dict[str, str], signed_in: bool
) -> None:
    client_id, _secret = flow.register(first_party=True)
    if signed_in:
        flow.login()
    response = _post(flow, {**_request(client_id, pkce()[1]), **change})
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.mimetype == "text/html"


def test_a_parameter_repeated_in_the_body_is_invalid_request(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    body = urlencode(_request(client_id, pkce()[1])) + "&nonce=a&nonce=b"
    response = _post(flow, body)
    assert response.status_code == 303
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_the_body_is_checked_as_a_query_is(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    params = _request(client_id, pkce()[1])
    del params["code_challenge"]
    response = _post(flow, params)
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_the_query_of_a_post_is_ignored(flow: Flow) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    _verifier, challenge = pkce()
    # A query cannot change the request (a wider scope, another redirect URI) or repeat it.
    query = urlencode({"scope": "openid profile junk:write", "redirect_uri": "https://evil/"})
    code = _code_back(_post(flow, _request(client_id, challenge), query=query))
    assert code
    alone = _post(flow, {}, query=urlencode(_request(client_id, challenge)))
    assert alone.status_code == 400 and "Location" not in alone.headers


def test_a_body_over_the_limit_is_413_and_issues_nothing(flow: Flow, app: Flask) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    limit = app.extensions["tokenserver.settings"].max_body_bytes
    params = _request(client_id, pkce()[1], state="s" * (limit + 1))
    response = _post(flow, params)
    assert response.status_code == 413 and "Location" not in response.headers
    assert response.mimetype == "text/html"


def test_posts_count_toward_the_per_ip_limit(make_app: Any) -> None:
    app = make_app(ratelimit_enabled=True, ratelimit_default="2/minute")
    flow = Flow(app, app.test_client())
    client_id, _secret = flow.register(first_party=True)
    params = _request(client_id, pkce()[1])
    assert [_post(flow, params).status_code for _ in range(3)] == [303, 303, 429]
