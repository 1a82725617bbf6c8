"""The sign-in, consent, account and logout pages: cookies, CSRF, throttling, open redirects."""

from __future__ import annotations

import base64
import json
import random
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import urlencode

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from tokenserver.extensions import db
from tokenserver.store import sessions as store_sessions
from tokenserver.store.tokens import revoking as store_revoking

from .conftest import PASSWORD, Actions
from .helpers import REDIRECT, Flow, b64url, claims_of, csrf_of, pkce, query_of


def _cookie(response: Any, name: str) -> str:
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(name + "="))
    return str(header)


def test_login_page_is_an_accessible_form_with_our_stylesheet_only(client: FlaskClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.text
    assert 'name="username"' in html and 'autocomplete="username"' in html
    assert 'name="password"' in html and 'autocomplete="current-password"' in html
    assert 'type="submit"' in html and '<label for="username">' in html
    assert "<script" not in html and "http" not in html.split("<body>")[1].split("footer")[0]
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "style-src 'self'" in csp
    assert "script-src" not in csp and page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert client.get("/static/pages.css").status_code == 200


def test_every_page_names_an_icon_of_ours_so_browsers_ask_for_no_favicon_ico(
    flow: Flow,
) -> None:
    # A page that names no icon makes the browser fetch /favicon.ico, which we do not have:
    # a 404 and an access-log line on every page shown.
    pages = [flow.client.get("/login")]
    flow.login()
    pages += [flow.client.get(path) for path in ("/account", "/device", "/oauth/logout")]
    pages.append(flow.client.get("/account/password"))  # an error page (405)
    for page in pages:
        icons = re.findall(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page.text)
        assert icons == ["/static/favicon.svg"], page.request.path
    icon = flow.client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert "img-src 'self'" in pages[0].headers["Content-Security-Policy"]


def test_sign_in_sets_a_rotated_httponly_lax_session_cookie(flow: Flow) -> None:
    first = flow.login()
    assert first.status_code == 303 and first.headers["Location"] == "/account"
    cookie = _cookie(first, "tokenserver_session")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Max-Age=86400" in cookie
    old = cookie.split(";")[0].split("=", 1)[1]
    second = flow.login()
    new = _cookie(second, "tokenserver_session").split(";")[0].split("=", 1)[1]
    assert new != old  # rotated at every sign-in
    flow.client.set_cookie("tokenserver_session", old)
    assert flow.client.get("/account").status_code == 303  # the old one ended


def test_session_cookie_is_secure_and_host_bound_on_https(make_app: Any, actions: Actions) -> None:
    actions.user("alice")
    app = make_app(issuer="https://auth.example.com", login_session_max_age=600)
    flow = Flow(app, app.test_client())
    response = flow.login()
    cookie = _cookie(response, "__Host-tokenserver_session")
    assert "Secure" in cookie and "Max-Age=600" in cookie and "Path=/" in cookie


def test_a_browser_session_ends_on_the_server_after_its_max_age(
    make_app: Any, actions: Actions
) -> None:
    actions.user("alice")
    app = make_app(login_session_max_age=600)
    flow = Flow(app, app.test_client())
    secret = _cookie(flow.login(), "tokenserver_session").split(";")[0].split("=", 1)[1]
    assert flow.client.get("/account").status_code == 200
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=601)):
        # A browser that kept the cookie past its Max-Age: the server has ended the session.
        flow.client.set_cookie("tokenserver_session", secret)
        response = flow.client.get("/account")
        assert response.status_code == 303 and response.headers["Location"].startswith("/login")


def test_wrong_password_unknown_user_and_disabled_user_get_one_message(
    flow: Flow, runner: FlaskCliRunner, actions: Actions
) -> None:
    actions.user("dora")
    runner.invoke(args=["users", "disable", "dora"])
    answers = {
        (r.status_code, "do not match" in r.text)
        for r in (
            flow.login(password="wrong-password"),
            flow.login(username="nobody"),
            flow.login(username="dora"),
        )
    }
    assert answers == {(400, True)}


def test_a_wrong_password_is_no_401_without_a_challenge(flow: Flow) -> None:
    # RFC 9110 §15.5.2: a 401 must carry WWW-Authenticate, and a form has no scheme to name.
    wrong = flow.login(password="wrong-password")
    assert wrong.status_code == 400 and wrong.mimetype == "text/html"
    assert "WWW-Authenticate" not in wrong.headers


def test_a_password_over_the_length_limit_only_as_typed_signs_in(
    flow: Flow, actions: Actions
) -> None:
    # 600 accented letters typed as letter + combining accent: 1200 code points, 600 once
    # normalised, and the password rules measure the normalised text.
    pairs = [f"{letter}\u0301" for letter in "aeiouycnszAEIOUYCNSZ"]
    letters = random.Random(7)
    password = "".join(letters.choice(pairs) for _ in range(600))
    assert len(password) == 1200 and len(unicodedata.normalize("NFKC", password)) == 600
    actions.user("accents", password)
    assert actions.token(actions.oauth_client(), "accents", password).status_code == 200
    signed_in = flow.login("accents", password)
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/account"


def test_a_throttled_account_gets_a_429_page_without_a_password_check(flow: Flow) -> None:
    for _ in range(5):
        assert flow.login(password="wrong-password").status_code == 400
    throttled = flow.login()  # the right password, but the guard refuses before checking
    assert throttled.status_code == 429 and throttled.mimetype == "text/html"
    assert int(throttled.headers["Retry-After"]) >= 1
    assert "tokenserver_session" not in throttled.headers.get("Set-Cookie", "")


def test_login_failures_count_against_the_per_ip_limit(make_app: Any, actions: Actions) -> None:
    actions.user("alice")
    app = make_app(ratelimit_enabled=True, ratelimit_token_failures="2/minute")
    flow = Flow(app, app.test_client())
    assert flow.login(username="nobody1").status_code == 400
    assert flow.login(username="nobody2").status_code == 400
    limited = flow.login()
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert "Retry-After" in limited.headers


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "http:evil.example",
    ],
)
def test_next_never_leaves_the_site(flow: Flow, target: str) -> None:
    response = flow.login(next=target)
    assert response.status_code == 303 and response.headers["Location"] == "/account"


def test_next_returns_to_a_local_page(flow: Flow) -> None:
    assert flow.login(next="/oauth/authorize?x=1").headers["Location"] == "/oauth/authorize?x=1"


def test_a_sign_in_posted_to_the_address_it_was_sent_to_returns_where_it_was_going(
    flow: Flow,
) -> None:
    address = "/login?" + urlencode({"next": "/oauth/authorize?x=1"})
    page = flow.client.get(address)
    form = {"csrf_token": csrf_of(page.text), "username": "alice", "password": PASSWORD}
    assert flow.client.post(address, data=form).headers["Location"] == "/oauth/authorize?x=1"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/"])
def test_next_in_the_address_never_leaves_the_site_either(flow: Flow, target: str) -> None:
    page = flow.client.get("/login")
    form = {"csrf_token": csrf_of(page.text), "username": "alice", "password": PASSWORD}
    response = flow.client.post("/login?" + urlencode({"next": target}), data=form)
    assert response.status_code == 303 and response.headers["Location"] == "/account"


def test_the_forms_next_wins_over_the_addresses(flow: Flow) -> None:
    page = flow.client.get("/login")
    form = {"csrf_token": csrf_of(page.text), "username": "alice", "password": PASSWORD}
    response = flow.client.post("/login?next=/device", data={**form, "next": "/oauth/authorize"})
    assert response.headers["Location"] == "/oauth/authorize"


def _forms(flow: Flow, client_id: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Every form of our pages: (action, fields without the CSRF token)."""
    asked = flow.authorize(client_id, pkce()[1]).headers["Location"]
    return {
        "login": ("/login", {"username": "alice", "password": PASSWORD}),
        "consent": (asked, {"decision": "allow"}),
        "password": (
            "/account/password",
            {
                "current_password": PASSWORD,
                "new_password": "n3w pass phrase",
                "confirm_password": "n3w pass phrase",
            },
        ),
        "end session": ("/account/sessions/end", {"session_id": "x"}),
        "sign out app": ("/account/apps/sign-out", {"client_id": client_id}),
        "everywhere": ("/account/sign-out-everywhere", {}),
        "logout": ("/oauth/logout", {"csrf_token": ""}),
        "device code": ("/device", {"user_code": "BCDF-GHJK"}),
        "device decision": ("/device", {"user_code": "BCDF-GHJK", "decision": "allow"}),
    }


def test_every_form_refuses_a_post_without_the_csrf_token(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    for name, (action, fields) in _forms(flow, client_id).items():
        response = flow.client.post(action, data=fields)
        assert response.status_code == 403, name
        assert "Location" not in response.headers, name
    assert flow.client.get("/account").status_code == 200  # still signed in: nothing happened


def test_every_form_refuses_a_cross_site_post_even_with_a_token(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    token = csrf_of(flow.client.get("/login").text)
    for name, (action, fields) in _forms(flow, client_id).items():
        response = flow.client.post(
            action,
            data={**fields, "csrf_token": token},
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert response.status_code == 403, name
    assert flow.client.get("/account").status_code == 200


@pytest.mark.parametrize(
    "form",
    [
        "login",
        "consent",
        "password",
        "end session",
        "sign out app",
        "everywhere",
        "logout",
        "device code",
        "device decision",
    ],
)
def test_sec_fetch_site_cross_site_alone_refuses_every_form(flow: Flow, form: str) -> None:
    # A browser that sends no Origin still says where a post came from: that alone refuses it.
    client_id, _secret = flow.register()
    flow.login()
    action, fields = _forms(flow, client_id)[form]
    token = csrf_of(flow.client.get("/login").text)
    response = flow.client.post(
        action, data={**fields, "csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403
    assert "Location" not in response.headers and "Set-Cookie" not in response.headers
    assert flow.client.get("/account").status_code == 200  # still signed in: nothing happened


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example"])
def test_a_cross_site_origin_alone_refuses_every_form(flow: Flow, origin: str) -> None:
    # A browser without Sec-Fetch-Site (older Safari) still sends Origin on a form post.
    client_id, _secret = flow.register()
    flow.login()
    token = csrf_of(flow.client.get("/login").text)
    for name, (action, fields) in _forms(flow, client_id).items():
        response = flow.client.post(
            action, data={**fields, "csrf_token": token}, headers={"Origin": origin}
        )
        assert response.status_code == 403, name
        assert "Location" not in response.headers and "Set-Cookie" not in response.headers, name
    assert flow.client.get("/account").status_code == 200


def test_a_disabled_user_loses_the_browser_session(flow: Flow, runner: FlaskCliRunner) -> None:
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    assert flow.client.get("/account").status_code == 200
    runner.invoke(args=["users", "disable", "alice"])
    assert flow.client.get("/account").headers["Location"].startswith("/login")
    response = flow.authorize(client_id, pkce()[1])
    assert response.headers["Location"].startswith("/login?")  # no code: signed out
    runner.invoke(args=["users", "enable", "alice"])
    assert flow.client.get("/account").status_code == 303  # the session stays dead


# The steps of a sign-out: whichever fails, as a lost database connection would, the others
# must not stand alone (a session left alive, that `users enable` would bring back).
_SIGN_OUT_STEPS = [(store_sessions, "end"), (store_revoking, "revoke_logins")]
_STEP_IDS = ["sessions.end", "revoking.revoke_logins"]


def _fail(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    def lost(*_args: Any, **_kwargs: Any) -> int:
        raise OperationalError("UPDATE", {}, Exception("connection lost"))

    monkeypatch.setattr(module, name, lost)


def _signed_in_with_tokens(flow: Flow) -> dict[str, str]:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    body = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    return Actions.bearer(body["access_token"])


@pytest.mark.parametrize(("module", "name"), _SIGN_OUT_STEPS, ids=_STEP_IDS)
def test_disabling_a_user_that_fails_part_way_changes_nothing(
    flow: Flow, runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch, module: Any, name: str
) -> None:
    bearer = _signed_in_with_tokens(flow)
    _fail(monkeypatch, module, name)
    result = runner.invoke(args=["users", "disable", "alice"])
    assert result.exit_code != 0
    monkeypatch.undo()
    assert flow.client.get("/account").status_code == 200  # the session was not ended alone
    assert flow.client.get("/oauth/userinfo", headers=bearer).status_code == 200  # not disabled


def test_account_lists_apps_and_sessions_and_signs_them_out(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True, name="Photo App")
    flow.login()
    verifier, challenge = pkce()
    tokens = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    page = flow.client.get("/account")
    assert "Photo App" in page.text and "this browser" in page.text
    token = csrf_of(page.text)
    done = flow.client.post(
        "/account/apps/sign-out", data={"csrf_token": token, "client_id": client_id}
    )
    assert done.status_code == 303
    bearer = Actions.bearer(tokens["access_token"])
    assert flow.client.get("/oauth/userinfo", headers=bearer).status_code == 401
    assert "Photo App" not in flow.client.get("/account").text


def _sign_out_app(flow: Flow, client_id: str) -> None:
    token = csrf_of(flow.client.get("/account").text)
    form = {"csrf_token": token, "client_id": client_id}
    assert flow.client.post("/account/apps/sign-out", data=form).status_code == 303


def test_signing_an_app_out_spends_its_codes_not_yet_exchanged(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    other_id, other_secret = flow.register(first_party=True, name="Other App")
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    other_code = flow.code_for(other_id, challenge)
    _sign_out_app(flow, client_id)
    refused = flow.exchange(client_id, secret, code, verifier)
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    # Another app's code stays good: the user signed out of one app only.
    assert flow.exchange(other_id, other_secret, other_code, verifier).status_code == 200


def test_change_password_ends_other_sign_ins(flow: Flow, app: Flask) -> None:
    other = Flow(app, app.test_client())
    other.login()
    flow.login()
    token = csrf_of(flow.client.get("/account").text)
    new = "a brand new passphrase"
    form = {
        "csrf_token": token,
        "current_password": "wrong",
        "new_password": new,
        "confirm_password": new,
    }
    assert flow.client.post("/account/password", data=form).status_code == 400
    form["current_password"] = PASSWORD
    assert flow.client.post("/account/password", data=form).status_code == 303
    assert flow.client.get("/account").status_code == 200  # this browser stays in
    assert other.client.get("/account").status_code == 303  # the other one is out
    assert flow.login(password=new).status_code == 303


def test_sign_out_everywhere_ends_this_session_too(flow: Flow) -> None:
    flow.login()
    token = csrf_of(flow.client.get("/account").text)
    response = flow.client.post("/account/sign-out-everywhere", data={"csrf_token": token})
    assert response.status_code == 303
    assert flow.client.get("/account").status_code == 303


@pytest.mark.parametrize(("module", "name"), _SIGN_OUT_STEPS, ids=_STEP_IDS)
def test_sign_out_everywhere_that_fails_part_way_changes_nothing(
    flow: Flow, monkeypatch: pytest.MonkeyPatch, module: Any, name: str
) -> None:
    bearer = _signed_in_with_tokens(flow)
    token = csrf_of(flow.client.get("/account").text)
    _fail(monkeypatch, module, name)
    response = flow.client.post("/account/sign-out-everywhere", data={"csrf_token": token})
    assert response.status_code == 503
    monkeypatch.undo()
    assert flow.client.get("/account").status_code == 200  # still signed in here
    assert flow.client.get("/oauth/userinfo", headers=bearer).status_code == 200


def _id_token(flow: Flow, username: str = "alice") -> tuple[str, str]:
    client_id, secret = flow.register(first_party=True)
    flow.login(username=username)
    verifier, challenge = pkce()
    body = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    return client_id, body["id_token"]


def test_a_head_of_a_logout_link_signs_no_one_out(flow: Flow) -> None:
    _client_id, id_token = _id_token(flow)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT}
    response = flow.client.head("/oauth/logout?" + urlencode(query))
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert flow.client.get("/account").status_code == 200  # still signed in


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        # A refused password change answers at this address; reopening it from the address bar
        # is a GET.
        ("GET", "/account/password", {"POST"}),
        ("GET", "/account/sign-out-everywhere", {"POST"}),
        ("PUT", "/login", {"GET", "HEAD", "POST"}),
        ("DELETE", "/device", {"GET", "HEAD", "POST"}),
    ],
)
def test_a_method_a_page_does_not_take_gets_an_error_page(
    flow: Flow, method: str, path: str, allowed: set[str]
) -> None:
    flow.login()
    response = flow.client.open(path, method=method)
    assert response.status_code == 405 and response.mimetype == "text/html"
    assert "Method Not Allowed" in response.text
    assert set(response.headers["Allow"].split(", ")) - {"OPTIONS"} == allowed
    # A page's headers: its stylesheet may load, and no cache keeps it.
    assert "style-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("method", "path"), [("GET", "/oauth/token"), ("PUT", "/users")])
def test_a_method_an_api_route_does_not_take_is_still_json(
    flow: Flow, method: str, path: str
) -> None:
    response = flow.client.open(path, method=method, headers={"Accept": "text/html"})
    assert response.status_code == 405 and response.json is not None
    assert response.json["error"] == "method_not_allowed"
    assert "Allow" in response.headers


_WEBSOCKET = {"Upgrade": "websocket", "Connection": "Upgrade"}


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/account//password", {}),  # matched again, its slashes merged: a redirect
        ("PUT", "/account//sign-out-everywhere", {}),
        ("PUT", "/login", _WEBSOCKET),  # matched again, a route that takes no WebSocket: a 400
    ],
)
def test_a_method_a_page_does_not_take_is_a_405_where_matching_again_fails(
    flow: Flow, method: str, path: str, headers: dict[str, str]
) -> None:
    # The 405's handler matches the address again to find its page; what that match raises
    # must not escape the handler as a 500.
    response = flow.client.open(path, method=method, headers=headers)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"].split(", ")


def test_rp_initiated_logout_ends_the_session_and_returns_to_the_registered_uri(
    flow: Flow,
) -> None:
    _client_id, id_token = _id_token(flow)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    response = flow.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 302
    assert query_of(response.headers["Location"]) == {"state": "s9"}
    assert response.headers["Location"].startswith(REDIRECT)
    assert flow.client.get("/account").status_code == 303


def test_an_empty_id_token_hint_beside_the_real_one_is_as_if_left_out(flow: Flow) -> None:
    # RFC 6749 §3.1, as at every OAuth endpoint: the hint checked is the one sent with a value,
    # and so are the keys it is checked with.
    _client_id, id_token = _id_token(flow)
    query = [
        ("id_token_hint", ""),
        ("id_token_hint", id_token),
        ("post_logout_redirect_uri", REDIRECT),
        ("state", "s9"),
    ]
    response = flow.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == REDIRECT + "?state=s9"
    assert flow.client.get("/account").status_code == 303


@pytest.mark.parametrize(
    "target", ["https://evil.example/", REDIRECT + "/../evil", "https://app.example.com"]
)
def test_logout_never_redirects_to_an_unregistered_uri(flow: Flow, target: str) -> None:
    _client_id, id_token = _id_token(flow)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": target}
    response = flow.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 200 and "Location" not in response.headers
    assert "signed out" in response.text


def test_logout_without_an_id_token_asks_first(flow: Flow) -> None:
    flow.login()
    asked = flow.client.get("/oauth/logout")
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert flow.client.get("/account").status_code == 200  # a bare link signs no one out
    done = flow.client.post("/oauth/logout", data={"csrf_token": csrf_of(asked.text)})
    assert done.status_code == 200 and flow.client.get("/account").status_code == 303


def _submitted(html: str) -> tuple[str, dict[str, str]]:
    """A page's form as a browser submits it: its action and every input's name and value."""
    action = re.search(r'<form method="post" action="([^"]*)"', html)
    assert action is not None, "the page has no form"
    inputs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
    return unescape(action.group(1)), {name: unescape(value) for name, value in inputs}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_confirmed_logout_returns_to_the_app_however_it_was_asked(
    app: Flask, flow: Flow, actions: Actions, method: str
) -> None:
    # Bob's ID token while alice is signed in: asked first, whether the app's page linked here
    # or POSTed its form from our own site (the browser sends the cookie with either).
    actions.user("bob")
    _client_id, bobs_id_token = _id_token(Flow(app, app.test_client()), username="bob")
    flow.login()
    sent = {"id_token_hint": bobs_id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    if method == "GET":
        asked = flow.client.get("/oauth/logout?" + urlencode({**sent, "utm_source": "x"}))
    else:
        asked = flow.client.post("/oauth/logout", data={**sent, "utm_source": "x"})
    assert asked.status_code == 200 and "Sign out?" in asked.text
    action, fields = _submitted(asked.text)
    # The logout request's own parameters travel on in the form, never into the address.
    assert action == "/oauth/logout"
    assert fields == {**sent, "csrf_token": csrf_of(asked.text)}
    done = flow.client.post(action, data=fields)
    assert done.status_code == 303 and done.headers["Location"] == REDIRECT + "?state=s9"
    assert flow.client.get("/account").status_code == 303


def test_a_confirmed_logout_without_an_id_token_returns_to_the_named_apps_uri(
    flow: Flow,
) -> None:
    # An app that dropped its ID token names itself with client_id (RP-Initiated Logout §2):
    # the user is asked, and their answer returns to the URI that app registered.
    client_id, _secret = flow.register(first_party=True)
    flow.login()
    sent = {"client_id": client_id, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    asked = flow.client.get("/oauth/logout?" + urlencode(sent))
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert "go back to <strong>app.example.com</strong>" in asked.text  # says where it goes
    assert flow.client.get("/account").status_code == 200  # a link alone signs no one out
    action, fields = _submitted(asked.text)
    done = flow.client.post(action, data=fields)
    assert done.status_code == 303 and done.headers["Location"] == REDIRECT + "?state=s9"
    assert flow.client.get("/account").status_code == 303


@pytest.mark.parametrize("named", ["another client", "no client"])
def test_a_confirmed_logout_without_an_id_token_goes_nowhere_unregistered(
    flow: Flow, named: str
) -> None:
    flow.register(first_party=True)  # REDIRECT is registered, but not for the client named
    sent = {"post_logout_redirect_uri": REDIRECT, "state": "s9"}
    if named == "another client":
        sent["client_id"] = flow.register("https://other.example.com/callback", first_party=True)[0]
    flow.login()
    asked = flow.client.get("/oauth/logout?" + urlencode(sent))
    assert "go back to" not in asked.text
    action, fields = _submitted(asked.text)
    done = flow.client.post(action, data=fields)
    assert done.status_code == 200 and "Location" not in done.headers
    assert "signed out" in done.text and flow.client.get("/account").status_code == 303


def test_logout_refuses_a_forged_id_token_hint(flow: Flow) -> None:
    flow.login()
    response = flow.client.get("/oauth/logout?id_token_hint=e30.e30.AAAA")
    assert response.status_code == 400 and flow.client.get("/account").status_code == 200


def test_logout_with_another_users_id_token_asks_first(
    app: Flask, flow: Flow, actions: Actions
) -> None:
    # Anyone can get an ID token of their own: it must not sign someone else out unasked.
    actions.user("bob")
    _client_id, bobs_id_token = _id_token(Flow(app, app.test_client()), username="bob")
    flow.login()
    query = {"id_token_hint": bobs_id_token, "post_logout_redirect_uri": REDIRECT}
    asked = flow.client.get("/oauth/logout?" + urlencode(query))
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert "Location" not in asked.headers
    assert flow.client.get("/account").status_code == 200  # alice is still signed in


def test_logout_with_an_access_token_as_the_hint_is_refused(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    body = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    query = {"id_token_hint": body["access_token"], "post_logout_redirect_uri": REDIRECT}
    response = flow.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 400 and "Location" not in response.headers
    assert flow.client.get("/account").status_code == 200


def test_logout_accepts_an_expired_id_token_of_the_signed_in_user(flow: Flow) -> None:
    # RP-Initiated Logout §2: the OP SHOULD accept an ID token past its exp.
    _client_id, id_token = _id_token(flow)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    expires = datetime.fromtimestamp(claims_of(id_token)["exp"], UTC)
    with time_machine.travel(expires + timedelta(minutes=1)):
        assert flow.client.get("/account").status_code == 200  # the session outlives it
        response = flow.client.get("/oauth/logout?" + urlencode(query))
        assert response.status_code == 302
        assert response.headers["Location"] == REDIRECT + "?state=s9"
        assert flow.client.get("/account").status_code == 303


def test_logout_with_an_id_token_of_an_earlier_session_asks_first(flow: Flow) -> None:
    # §2: the OP MUST ask when the ID token does not belong to the current OP session. One left
    # over from a session that has ended (in a log, a history) must not sign out a later one.
    _client_id, id_token = _id_token(flow)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    with time_machine.travel(datetime.now(UTC) + timedelta(days=2)):
        flow.login()  # the first session has expired by then: a new one, same user
        asked = flow.client.get("/oauth/logout?" + urlencode(query))
        assert asked.status_code == 200 and "Sign out?" in asked.text
        assert "Location" not in asked.headers
        assert flow.client.get("/account").status_code == 200  # still signed in
        action, fields = _submitted(asked.text)
        done = flow.client.post(action, data=fields)  # the user says yes: back to the app
        assert done.status_code == 303 and done.headers["Location"] == REDIRECT + "?state=s9"
        assert flow.client.get("/account").status_code == 303


def test_logout_with_an_id_token_of_another_live_session_asks_first(app: Flask, flow: Flow) -> None:
    # The same user signed in on two browsers: the first one's ID token is not this one's.
    _client_id, id_token = _id_token(flow)
    other = Flow(app, app.test_client())
    other.login()
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT}
    asked = other.client.get("/oauth/logout?" + urlencode(query))
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert other.client.get("/account").status_code == 200
    assert flow.client.get("/account").status_code == 200


def _another_worker(make_app: Any, flow: Flow) -> Flow:
    """The same browser, served by a worker started now: its key ring is loaded afresh."""
    worker = make_app()
    browser = Flow(worker, worker.test_client())
    cookie = flow.client.get_cookie("tokenserver_session")
    if cookie is not None:
        browser.client.set_cookie("tokenserver_session", cookie.value)
    return browser


def test_logout_accepts_an_id_token_whose_key_has_left_the_jwks(
    make_app: Any, flow: Flow, runner: FlaskCliRunner
) -> None:
    # An app keeps its user's ID token as long as its own session, past the rotation of the
    # key that signed it: its sign-out link must still sign the user out and return.
    _client_id, id_token = _id_token(flow)
    old_kid = _kid_of(id_token)
    assert runner.invoke(args=["keys", "rotate", "--now"]).exit_code == 0
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=1)):
        browser = _another_worker(make_app, flow)
        published = browser.client.get("/.well-known/jwks.json").json["keys"]
        assert old_kid not in [key["kid"] for key in published]
        response = browser.client.get("/oauth/logout?" + urlencode(query))
        assert response.status_code == 302
        assert response.headers["Location"] == REDIRECT + "?state=s9"
        assert browser.client.get("/account").status_code == 303


def test_a_logout_hint_reads_the_one_key_it_names_however_many_are_stored(
    make_app: Any, flow: Flow, runner: FlaskCliRunner
) -> None:
    # Anyone may send hints, and /oauth/logout is not rate limited: each must cost one look-up
    # by its kid, never a read (and a parse) of every key rotation has left stored.
    _client_id, id_token = _id_token(flow)
    kid = _kid_of(id_token)
    for _ in range(3):
        assert runner.invoke(args=["keys", "rotate", "--now"]).exit_code == 0
    worker = make_app(key_cache_seconds=3600)  # its published keys, loaded once, stay cached
    browser = Flow(worker, worker.test_client())
    browser.client.set_cookie("tokenserver_session", _cookie_value(flow))
    assert browser.client.get("/.well-known/jwks.json").status_code == 200
    seen: list[Any] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "signing_keys" in statement:
            seen.append(params.values() if isinstance(params, dict) else params)

    with worker.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT}
        response = browser.client.get("/oauth/logout?" + urlencode(query))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 302 and response.headers["Location"] == REDIRECT
    assert seen and all(kid in params for params in seen)


def _cookie_value(flow: Flow) -> str:
    cookie = flow.client.get_cookie("tokenserver_session")
    assert cookie is not None
    return cookie.value


def test_logout_refuses_an_id_token_signed_by_a_revoked_key(
    make_app: Any, flow: Flow, runner: FlaskCliRunner
) -> None:
    # A revoked key may have leaked: what it signed names no one, however old.
    _client_id, id_token = _id_token(flow)
    assert runner.invoke(args=["keys", "revoke", _kid_of(id_token)]).exit_code == 0
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT}
    browser = _another_worker(make_app, flow)
    response = browser.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 400 and "Location" not in response.headers
    assert browser.client.get("/account").status_code == 200


@pytest.mark.parametrize("names_itself", [False, True])
def test_logout_with_an_id_token_whose_key_is_deleted_asks_and_signs_out(
    make_app: Any, flow: Flow, runner: FlaskCliRunner, names_itself: bool
) -> None:
    # Older still: `tokens purge` has deleted the key. The hint can name no one now; refusing
    # the link would leave the user signed in here, so it counts as no hint: the user is asked.
    client_id, id_token = _id_token(flow)
    assert runner.invoke(args=["keys", "rotate", "--now"]).exit_code == 0
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT, "state": "s9"}
    if names_itself:
        query["client_id"] = client_id
    with time_machine.travel(datetime.now(UTC) + timedelta(days=3)):
        assert runner.invoke(args=["tokens", "purge"]).exit_code == 0
        flow.login()  # the first browser session has expired by then: a new one, same user
        browser = _another_worker(make_app, flow)
        asked = browser.client.get("/oauth/logout?" + urlencode(query))
        assert asked.status_code == 200 and "Sign out?" in asked.text
        assert browser.client.get("/account").status_code == 200  # not unasked
        action, fields = _submitted(asked.text)
        done = browser.client.post(action, data=fields)
        if names_itself:  # back to the app that named itself, as with no hint at all
            assert done.status_code == 303 and done.headers["Location"] == REDIRECT + "?state=s9"
        else:
            assert done.status_code == 200 and "signed out" in done.text
        assert browser.client.get("/account").status_code == 303


def test_logout_hint_under_an_unknown_kid_is_asked_about_never_acted_on(flow: Flow) -> None:
    # Whoever signs an "ID token" under a kid we never had gains nothing: the user is asked.
    flow.login()
    header = {"alg": "RS256", "kid": "never-ours", "typ": "JWT"}
    forged = jwt.encode(header, {"sub": "1", "aud": "x"}, RSAKey.generate_key(2048))
    asked = flow.client.get("/oauth/logout?" + urlencode({"id_token_hint": forged}))
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert flow.client.get("/account").status_code == 200


@pytest.mark.parametrize("kid", ["nul\x00kid", "\ud800", "k" * 300])
def test_logout_hint_under_a_kid_no_key_could_have_is_asked_about(flow: Flow, kid: str) -> None:
    # A kid is the attacker's to write: one the database cannot even compare (a NUL, which
    # PostgreSQL text refuses; a lone surrogate, which no driver encodes) is a kid we never
    # had, asked about like any other, never a 500.
    flow.login()
    header = b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    forged = f"{header}.{b64url(b'{}')}.{b64url(bytes(256))}"
    asked = flow.client.get("/oauth/logout?" + urlencode({"id_token_hint": forged}))
    assert asked.status_code == 200 and "Sign out?" in asked.text
    assert flow.client.get("/account").status_code == 200


@pytest.mark.parametrize("alg", ['RS"256', "RS256\\"])
def test_logout_hint_whose_alg_holds_a_quote_is_refused_never_500(flow: Flow, alg: str) -> None:
    # joserfc's refusal quotes the alg, which no OAuth error description may carry: the hint
    # is refused as a page, like any ID token that is not ours, and nobody is signed out.
    _client_id, id_token = _id_token(flow)
    header = {"alg": alg, "kid": _kid_of(id_token), "typ": "JWT"}
    _header, payload, signature = id_token.split(".")
    forged = f"{b64url(json.dumps(header).encode())}.{payload}.{signature}"
    response = flow.client.get("/oauth/logout?" + urlencode({"id_token_hint": forged}))
    assert response.status_code == 400 and "Location" not in response.headers
    assert flow.client.get("/account").status_code == 200


def _kid_of(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


def test_logout_refuses_an_id_token_hint_another_issuer_issued(make_app: Any, flow: Flow) -> None:
    # RP-Initiated Logout §2: the OP MUST validate that it was the issuer. Signed with our key
    # before the issuer moved, the token names another issuer: the user is not signed out.
    _client_id, id_token = _id_token(flow)
    moved = make_app(issuer="http://127.0.0.1:8000")
    browser = moved.test_client()
    browser.set_cookie("tokenserver_session", flow.client.get_cookie("tokenserver_session").value)
    query = {"id_token_hint": id_token, "post_logout_redirect_uri": REDIRECT}
    response = browser.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 400 and "Location" not in response.headers
    assert browser.get("/account").status_code == 200


def test_logout_refuses_an_id_token_hint_for_another_client_id(flow: Flow) -> None:
    _client_id, id_token = _id_token(flow)
    other, _secret = flow.register(first_party=True)
    query = {"id_token_hint": id_token, "client_id": other, "post_logout_redirect_uri": REDIRECT}
    response = flow.client.get("/oauth/logout?" + urlencode(query))
    assert response.status_code == 400 and "Location" not in response.headers
    assert flow.client.get("/account").status_code == 200
