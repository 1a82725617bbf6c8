"""Our pages under attack: forged forms, stolen codes after sign-out, framing, open redirects."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine

from tokenserver import accounts
from tokenserver.browser_models import BrowserSession
from tokenserver.store import sessions
from tokenserver.store.tokens import issuing, lookups, revoking

from .conftest import PASSWORD
from .helpers import (
    REDIRECT,
    Flow,
    csrf_of,
    pkce,
    query_of,
    reset_queued_behind,
    until_a_backend_waits_for_a_lock,
)

NEW_PASSWORD = "a different long passphrase"

ISSUER = "http://localhost:8000"


def _sign_out_everywhere(flow: Flow) -> None:
    token = csrf_of(flow.client.get("/account").text)
    done = flow.client.post("/account/sign-out-everywhere", data={"csrf_token": token})
    assert done.status_code == 303


def _change_password(flow: Flow) -> None:
    token = csrf_of(flow.client.get("/account").text)
    new = "a brand new passphrase"
    form = {
        "csrf_token": token,
        "current_password": PASSWORD,
        "new_password": new,
        "confirm_password": new,
    }
    assert flow.client.post("/account/password", data=form).status_code == 303


def _end_the_other_session(flow: Flow) -> None:
    page = flow.client.get("/account").text
    other = next(row for row in page.split("<li>")[1:] if "this browser" not in row)
    session_id = other.split('name="session_id" value="', 1)[1].split('"', 1)[0]
    form = {"csrf_token": csrf_of(page), "session_id": session_id}
    assert flow.client.post("/account/sessions/end", data=form).status_code == 303


def _this_session_id(flow: Flow) -> str:
    page = flow.client.get("/account").text
    this = next(row for row in page.split("<li>")[1:] if "this browser" in row)
    return this.split('name="session_id" value="', 1)[1].split('"', 1)[0]


def _end_this_session(flow: Flow) -> None:
    form = {"csrf_token": csrf_of(flow.client.get("/account").text)}
    form["session_id"] = _this_session_id(flow)
    assert flow.client.post("/account/sessions/end", data=form).status_code == 303


def _log_out(flow: Flow) -> None:
    asked = flow.client.get("/oauth/logout")
    done = flow.client.post("/oauth/logout", data={"csrf_token": csrf_of(asked.text)})
    assert done.status_code == 200


def test_a_csrf_token_of_another_browser_is_refused(flow: Flow, app: Flask) -> None:
    flow.login()
    other = app.test_client()
    foreign = csrf_of(other.get("/login").text)
    assert foreign != csrf_of(flow.client.get("/account").text)
    response = flow.client.post("/account/sign-out-everywhere", data={"csrf_token": foreign})
    assert response.status_code == 403
    assert flow.client.get("/account").status_code == 200  # nothing happened


def test_a_post_with_origin_null_is_refused(flow: Flow) -> None:
    flow.login()
    token = csrf_of(flow.client.get("/account").text)
    response = flow.client.post(
        "/account/sign-out-everywhere", data={"csrf_token": token}, headers={"Origin": "null"}
    )
    assert response.status_code == 403 and flow.client.get("/account").status_code == 200


def test_sign_out_everywhere_revokes_the_apps_refresh_tokens(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    tokens = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier).json
    _sign_out_everywhere(flow)
    refreshed = flow.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 400 and refreshed.json["error"] == "invalid_grant"


@pytest.mark.parametrize("sign_out", [_log_out, _end_this_session, _sign_out_everywhere])
def test_signing_out_ends_the_session_on_the_server_not_just_the_cookie(
    flow: Flow, sign_out: Any
) -> None:
    cookie = flow.login().headers.getlist("Set-Cookie")[-1]
    name, value = cookie.split(";", 1)[0].split("=", 1)
    assert name == "tokenserver_session"
    sign_out(flow)
    flow.client.set_cookie(name, value)  # a copy of the cookie kept from before
    assert flow.client.get("/account").status_code == 303


@pytest.mark.parametrize(
    "sign_out", [_sign_out_everywhere, _change_password, _end_the_other_session]
)
def test_a_code_not_yet_exchanged_dies_with_its_browser_session(
    app: Flask, flow: Flow, sign_out: Any
) -> None:
    # A code that a thief's session got just before the user signed that session out must not
    # turn into tokens that outlive the sign-out (Keycloak: a code needs its session alive).
    client_id, secret = flow.register(first_party=True)
    thief = Flow(app, app.test_client())
    thief.login()
    verifier, challenge = pkce()
    code = thief.code_for(client_id, challenge)
    flow.login()
    sign_out(flow)
    response = thief.exchange(client_id, secret, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def _alice_id(app: Flask) -> int:
    with app.app_context():
        user = accounts.find("alice")
        assert user is not None
        return user.id


def _a_code_not_yet_exchanged(flow: Flow) -> Any:
    """Alice signed in and got a code for a first-party app: its exchange, to call later."""
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(client_id, challenge)
    return lambda: flow.exchange(client_id, secret, code, verifier)


def _live_apps(app: Flask, user_id: int) -> list[Any]:
    with app.app_context():
        return lookups.signed_in_apps(user_id)


@pytest.mark.parametrize("ending", ["sign out everywhere", "password reset"])
def test_a_sign_out_landing_during_the_exchange_leaves_no_tokens(
    app: Flask, flow: Flow, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    # "Sign out everywhere" (or an operator's password reset) commits after the exchange
    # looked its code up and before it stores the tokens: nothing it stores may outlive it.
    exchange_of = _a_code_not_yet_exchanged(flow)
    user_id = _alice_id(app)
    store_issued = issuing.store_issued

    def signed_out_first(*args: Any, **kwargs: Any) -> Any:
        if ending == "password reset":
            accounts.reset_password("alice", NEW_PASSWORD)
        else:
            sessions.end(user_id)
            revoking.revoke_logins(user_id)
        return store_issued(*args, **kwargs)

    monkeypatch.setattr(issuing, "store_issued", signed_out_first)
    response = exchange_of()
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"
    assert _live_apps(app, user_id) == []


def test_a_sign_out_committing_during_the_exchange_waits_for_it(
    app: Flask, flow: Flow, database_url: str
) -> None:
    # On PostgreSQL the sign-out's transaction is open while the exchange stores its tokens:
    # the exchange must wait for it and then see the session ended.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time")
    exchange_of = _a_code_not_yet_exchanged(flow)
    user_id = _alice_id(app)
    answers: list[Any] = []
    engine = create_engine(database_url)
    try:
        with engine.connect() as other:
            signing_out = other.begin()
            ended = BrowserSession.__table__.update().values(ended_at=datetime.now(UTC))
            other.execute(ended.where(BrowserSession.user_id == user_id))
            exchange = threading.Thread(target=lambda: answers.append(exchange_of()))
            exchange.start()
            until_a_backend_waits_for_a_lock(other, exchange)
            signing_out.commit()
            exchange.join()
    finally:
        engine.dispose()
    assert answers[0].status_code == 400 and answers[0].json["error"] == "invalid_grant"
    assert _live_apps(app, user_id) == []


def test_a_password_reset_waits_for_an_exchange_under_way_and_revokes_what_it_stored(
    app: Flask, flow: Flow, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other way round: the exchange holds the browser session's row when the reset
    # starts. The reset ends the sessions first, so it waits for the exchange, and its
    # revocation then sees the login the exchange stored.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one write transaction at a time")
    exchange_of = _a_code_not_yet_exchanged(flow)
    user_id = _alice_id(app)
    holding, release = threading.Event(), threading.Event()
    signed_in = sessions.signed_in

    def held(conn: Any, session_id: str) -> bool:
        found = signed_in(conn, session_id)
        holding.set()
        release.wait(30)
        return found

    monkeypatch.setattr(sessions, "signed_in", held)
    answers: list[Any] = []
    exchange = threading.Thread(target=lambda: answers.append(exchange_of()))
    exchange.start()
    assert holding.wait(30)

    resetting = reset_queued_behind(app, database_url, NEW_PASSWORD)
    release.set()
    exchange.join()
    resetting.join()
    assert answers[0].status_code == 200  # it came first...
    assert _live_apps(app, user_id) == []  # ...and the reset revoked what it stored


def test_a_user_cannot_end_another_users_browser_session(app: Flask, flow: Flow) -> None:
    # A session id is no secret (an app sees it as an id_token's `sid`): ending one must
    # be limited to the sessions of the user asking.
    flow.login()
    alices = _this_session_id(flow)
    made = app.test_client().post("/users", json={"username": "bob", "password": PASSWORD})
    assert made.status_code == 201
    bob = Flow(app, app.test_client())
    bob.login("bob")
    token = csrf_of(bob.client.get("/account").text)
    form = {"csrf_token": token, "session_id": alices}
    response = bob.client.post("/account/sessions/end", data=form)
    assert response.status_code == 303  # as for any id that is not one of bob's
    assert bob.client.get("/account").status_code == 200
    assert flow.client.get("/account").status_code == 200  # alice is still signed in


def test_ending_another_session_leaves_this_sessions_code(app: Flask, flow: Flow) -> None:
    exchange_of = _a_code_not_yet_exchanged(flow)
    Flow(app, app.test_client()).login()
    _end_the_other_session(flow)  # the newer session, not this browser's
    assert exchange_of().status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/login", "/account", "/consent", "/device", "/oauth/logout", "/oauth/authorize"],
)
def test_every_page_and_its_errors_forbid_framing_and_caching(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)  # signed out, no parameters: a page, a redirect or an error
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], path
    assert response.headers["X-Frame-Options"] == "DENY", path
    assert response.headers["Cache-Control"] == "no-store", path


@pytest.mark.parametrize("path", ["/account/nowhere", "/login/x", "/consent/x"])
def test_unknown_paths_beside_the_pages_forbid_framing(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "target",
    [
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/\tevil.example",
        "%2F%2Fevil.example",
        "/\u3000/evil.example",
        "JAVASCRIPT:alert(1)",
        " //evil.example",
    ],
)
def test_next_with_encoded_or_disguised_slashes_stays_on_the_site(flow: Flow, target: str) -> None:
    location = flow.login(next=target).headers["Location"]
    assert urlsplit(urljoin(ISSUER + "/login", location)).netloc == urlsplit(ISSUER).netloc
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location


@pytest.mark.parametrize(
    "action, field",
    [("/account/sessions/end", "session_id"), ("/account/apps/sign-out", "client_id")],
)
def test_an_id_with_a_nul_changes_nothing_and_is_not_a_500(
    flow: Flow, action: str, field: str
) -> None:
    flow.login()
    token = csrf_of(flow.client.get("/account").text)
    response = flow.client.post(action, data={"csrf_token": token, field: "a\x00b"})
    assert response.status_code == 303  # as for any id that is not one of the user's
    assert flow.client.get("/account").status_code == 200


def test_an_apps_logout_post_without_the_cookie_signs_out_on_the_get(
    app: Flask, flow: Flow
) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()
    verifier, challenge = pkce()
    id_token = flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier)
    form = {
        "id_token_hint": id_token.json["id_token"],
        "post_logout_redirect_uri": REDIRECT,
        "state": "s9",
    }
    # The app's page POSTs from another site: the browser leaves our SameSite=Lax cookie out.
    posted = app.test_client().post("/oauth/logout", data=form)
    assert posted.status_code == 303 and flow.client.get("/account").status_code == 200
    assert query_of(posted.headers["Location"]) == form
    done = flow.client.get(posted.headers["Location"])  # the navigation's GET has the cookie
    assert done.headers["Location"] == REDIRECT + "?state=s9"
    assert flow.client.get("/account").status_code == 303


def _self_registered(flow: Flow, runner: FlaskCliRunner, name: str) -> str:
    """A public web app registered over RFC 7591 by whoever was handed an initial access token."""
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    metadata = {
        "client_name": name,
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
        "scope": "openid profile junk:read",
    }
    headers = {"Authorization": f"Bearer {token}"}
    response = flow.client.post("/oauth/register", json=metadata, headers=headers)
    assert response.status_code == 201, response.json
    return str(response.json["client_id"])


def _consent_page(flow: Flow, client_id: str, **params: str) -> str:
    asked = flow.authorize(client_id, pkce()[1], **params)
    assert asked.headers["Location"].startswith("/consent?"), asked.headers["Location"]
    return flow.client.get(asked.headers["Location"]).text


def test_a_self_registered_app_named_like_us_is_marked_unchecked_with_its_host(
    flow: Flow, runner: FlaskCliRunner
) -> None:
    # Anyone with an initial access token picks the name the consent page puts in its heading.
    client_id = _self_registered(flow, runner, "tokenserver")
    flow.login()
    page = _consent_page(flow, client_id)
    assert "This app registered itself" in page
    assert "Allow it only if you trust <strong>app.example.com</strong>" in page


def test_an_app_the_operator_registered_is_not_marked_and_names_its_host(flow: Flow) -> None:
    client_id, _secret = flow.register()
    flow.login()
    page = _consent_page(flow, client_id)
    assert "registered itself" not in page
    assert "Your answer goes to <strong>app.example.com</strong>" in page


def test_the_account_page_marks_a_signed_in_app_that_registered_itself(
    flow: Flow, runner: FlaskCliRunner
) -> None:
    ours, secret = flow.register(first_party=True, name="Photo App")
    theirs = _self_registered(flow, runner, "Calendar App")
    flow.login()
    for client_id, client_secret in ((ours, secret), (theirs, None)):
        verifier, challenge = pkce()
        code = flow.code_for(client_id, challenge)
        assert flow.exchange(client_id, client_secret, code, verifier).status_code == 200
    rows = re.findall(r"<li>.*?</li>", flow.client.get("/account").text, re.DOTALL)
    (own,) = [row for row in rows if "Photo App" in row]
    (other,) = [row for row in rows if "Calendar App" in row]
    assert "registered itself" in other and "registered itself" not in own


@pytest.mark.parametrize(
    "uri, shown",
    [
        # A Cyrillic "а": shown as the browser would show it, not as the host it imitates.
        ("https://\u0430pp.example.com/callback", "xn--pp-6kc.example.com"),
        ("http://127.0.0.1/callback", "an app on this device"),
        ("com.example.photos:/callback", "com.example.photos"),
    ],
)
def test_the_consent_page_says_where_the_answer_goes_as_a_person_can_check_it(
    flow: Flow, uri: str, shown: str
) -> None:
    client_id, _secret = flow.register(uri)
    flow.login()
    page = _consent_page(flow, client_id, redirect_uri=uri)
    assert f"Your answer goes to <strong>{shown}</strong>" in page


def test_an_unregistered_redirect_uri_is_not_repeated_on_our_error_page(flow: Flow) -> None:
    client_id, _secret = flow.register()
    planted = "https://app.example.com/ Your account is locked. Call 555-0100 to unlock it"
    response = flow.authorize(client_id, pkce()[1], redirect_uri=planted)
    assert response.status_code == 400 and "Location" not in response.headers
    assert "555-0100" not in response.text
    assert "The redirect_uri is not one this app registered." in response.text


@pytest.mark.parametrize(
    "hint",
    [
        "\u202eecila",  # shows as "alice", signs in as another name
        'alice" autofocus="',
        "a" * 5000,
        "alice\nbob",
        "alice@example.com",
    ],
)
def test_a_login_hint_that_cannot_be_a_username_fills_in_nothing(
    client: FlaskClient, hint: str
) -> None:
    page = client.get("/login?" + urlencode({"login_hint": hint}))
    assert page.status_code == 200
    field = re.search(r'<input id="username"[^>]*>', page.text)
    assert field and 'value=""' in field.group(0), field
