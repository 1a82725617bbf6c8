"""The device authorization grant (RFC 8628): the endpoint, the /device page, polling."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, text

from tokenserver import accounts, signin
from tokenserver.oauth import devices
from tokenserver.oauth.devices import (
    DEVICE_CODE_TTL,
    POLL_INTERVAL,
    USER_CODE_ALPHABET,
    normalize_user_code,
)
from tokenserver.observability import JSONFormatter
from tokenserver.store import devices as store_devices
from tokenserver.store.tokens import issuing, lookups

from .conftest import PASSWORD, REDIS_URL, Actions, LiveServer, RegisteredClient
from .helpers import Flow, Prover, csrf_of, run_behind

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile junk:read"
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


class Device:
    """A device (its client) and the browser of the user who approves it (the test client)."""

    def __init__(self, app: Flask, client: FlaskClient, oauth_client: RegisteredClient) -> None:
        self.flow = Flow(app, client)
        self.client = client
        self.oauth_client = oauth_client

    def _auth(self, client: RegisteredClient | None = None) -> dict[str, Any]:
        who = client or self.oauth_client
        if who.secret is None:
            return {"data": {"client_id": who.client_id}}
        return {"data": {}, "auth": who.auth}

    def start(self, client: RegisteredClient | None = None, **params: str) -> Any:
        auth = self._auth(client)
        return self.client.post(
            "/oauth/device_authorization",
            data={**auth.pop("data"), **params},
            **auth,
        )

    def codes(self, **params: str) -> dict[str, Any]:
        response = self.start(**params)
        assert response.status_code == 200, response.json
        return dict(response.json)

    def poll(self, device_code: str, client: RegisteredClient | None = None, **extra: str) -> Any:
        auth = self._auth(client)
        data = {**auth.pop("data"), "grant_type": DEVICE_GRANT, "device_code": device_code}
        return self.client.post("/oauth/token", data={**data, **extra}, **auth)

    def enter(self, user_code: str) -> Any:
        """Type the code on /device (signed in already): the question, or a refusal."""
        page = self.client.get("/device")
        assert page.status_code == 200, page.status_code
        return self.client.post(
            "/device", data={"csrf_token": csrf_of(page.text), "user_code": user_code}
        )

    def answer(self, user_code: str, decision: str = "allow") -> Any:
        question = self.enter(user_code)
        assert question.status_code == 200, question.text
        return self.client.post(
            "/device",
            data={
                "csrf_token": csrf_of(question.text),
                "user_code": user_code,
                "decision": decision,
            },
        )


def _error(response: Any) -> str:
    assert response.status_code == 400, (response.status_code, response.json)
    return str(response.json["error"])


@pytest.fixture
def tv(actions: Actions) -> RegisteredClient:
    """A public device app registered for the device grant (and refresh tokens)."""
    return actions.oauth_client(
        "Living Room TV", public=True, grants=(DEVICE_GRANT, "refresh_token"), scope=SCOPE
    )


@pytest.fixture
def device(app: Flask, client: FlaskClient, actions: Actions, tv: RegisteredClient) -> Device:
    actions.user("alice")
    return Device(app, client, tv)


def _stored(app: Flask) -> list[dict[str, Any]]:
    engine = create_engine(app.extensions["tokenserver.settings"].database_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM device_authorizations"))]
    engine.dispose()
    return rows


# --- the device authorization endpoint ---------------------------------------------------------


def test_device_authorization_answers_codes_and_stores_only_digests(
    app: Flask, device: Device
) -> None:
    response = device.start()
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert USER_CODE.match(body["user_code"])
    assert body["verification_uri"] == "http://localhost:8000/device"
    assert (
        body["verification_uri_complete"]
        == f"{body['verification_uri']}?user_code={body['user_code']}"
    )
    assert body["expires_in"] == DEVICE_CODE_TTL == 600 and body["interval"] == 5
    (row,) = _stored(app)
    stored = " ".join(str(value) for value in row.values())
    assert body["device_code"] not in stored
    assert body["user_code"].replace("-", "") not in stored and body["user_code"] not in stored
    assert row["scope"] == SCOPE and row["status"] == "pending"


def test_confidential_clients_authenticate_as_at_the_token_endpoint(
    device: Device, actions: Actions
) -> None:
    printer = actions.oauth_client("Printer", grants=(DEVICE_GRANT,), scope="junk:read")
    assert device.start(printer).status_code == 200
    wrong = RegisteredClient(printer.client_id, "not-the-secret")
    refused = device.start(wrong)
    assert refused.status_code == 401 and refused.json["error"] == "invalid_client"
    # A confidential client may not pass as public by sending only its client_id.
    bare = RegisteredClient(printer.client_id, None)
    assert device.start(bare).status_code == 401
    unknown = RegisteredClient("no-such-client", None)
    assert device.start(unknown).status_code == 401


def test_a_client_without_the_device_grant_is_refused_and_nothing_is_stored(
    app: Flask, device: Device, actions: Actions
) -> None:
    other = actions.oauth_client("Web", public=True, grants=("password", "refresh_token"))
    response = device.start(other)
    assert _error(response) == "unauthorized_client"
    assert _stored(app) == []


def test_scope_is_narrowed_like_the_token_endpoint(app: Flask, device: Device) -> None:
    assert device.codes()  # no scope: the client's whole registered scope
    assert _error(device.start(scope="junk:write")) == "invalid_scope"  # not registered for it
    assert _error(device.start(scope="admin")) == "invalid_scope"  # no such scope at all
    assert _error(device.start(scope="openid junk:write email")) == "invalid_scope"
    narrow = device.codes(scope="junk:read")
    device.flow.login()
    device.answer(narrow["user_code"])
    token = device.poll(narrow["device_code"])
    assert token.status_code == 200 and token.json["scope"] == "junk:read"
    assert "id_token" not in token.json  # no openid, no id_token
    assert sorted(row["scope"] for row in _stored(app)) == ["junk:read", SCOPE]


def test_an_openid_device_request_ignores_scopes_we_do_not_know(device: Device) -> None:
    # OpenID Connect Core §3.1.2.1, as at /oauth/authorize.
    codes = device.codes(scope="openid profile email offline_access")
    device.flow.login()
    device.answer(codes["user_code"])
    token = device.poll(codes["device_code"])
    assert token.status_code == 200 and token.json["scope"] == "openid profile"
    assert token.json["id_token"]


def test_resource_picks_the_audience_and_must_be_registered(
    device: Device, actions: Actions
) -> None:
    api = "https://api.example.com"
    tv = actions.oauth_client(
        "Audience TV", public=True, grants=(DEVICE_GRANT,), scope="junk:read", audiences=(api,)
    )
    assert _error(device.start(tv, resource="https://other.example.com")) == "invalid_target"
    codes = device.start(tv, resource=api).json
    device.flow.login()
    device.answer(codes["user_code"])
    # The token request may not widen the authorization's resources.
    wider = device.poll(codes["device_code"], tv, resource="https://x.example")
    assert _error(wider) == "invalid_target"
    token = device.poll(codes["device_code"], tv)
    assert token.status_code == 200
    assert (
        pyjwt.decode(token.json["access_token"], options={"verify_signature": False})["aud"] == api
    )


def test_an_unparseable_resource_is_invalid_target_and_nothing_is_stored(
    app: Flask, device: Device
) -> None:
    # urlsplit cannot read this authority: a refusal, never a 500.
    assert _error(device.start(resource="https://[api.example.com/")) == "invalid_target"
    assert _stored(app) == []


def test_the_endpoint_wants_a_form_body(device: Device) -> None:
    response = device.client.post("/oauth/device_authorization", json={"client_id": "x"})
    assert _error(response) == "invalid_request"


# --- polling -----------------------------------------------------------------------------------


def test_polling_is_pending_then_slow_down_raises_the_interval(device: Device) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False) as clock:
        codes = device.codes()
        assert _error(device.poll(codes["device_code"])) == "authorization_pending"
        clock.shift(timedelta(seconds=2))
        slow = device.poll(codes["device_code"])
        assert _error(slow) == "slow_down" and "10 seconds" in slow.json["error_description"]
        clock.shift(timedelta(seconds=6))  # the old interval: now too soon again
        assert _error(device.poll(codes["device_code"])) == "slow_down"
        clock.shift(timedelta(seconds=16))  # 15 s is the interval now
        assert _error(device.poll(codes["device_code"])) == "authorization_pending"
        clock.shift(timedelta(seconds=16))
        assert _error(device.poll(codes["device_code"])) == "authorization_pending"


def test_an_allowed_code_gives_tokens_once_that_work(
    device: Device, client: FlaskClient, tv: RegisteredClient
) -> None:
    codes = device.codes()
    device.flow.login()
    done = device.answer(codes["user_code"])
    assert done.status_code == 200 and "Device connected" in done.text
    token = device.poll(codes["device_code"])
    assert token.status_code == 200 and token.headers["Cache-Control"] == "no-store"
    body = token.json
    assert body["token_type"] == "Bearer" and body["scope"] == SCOPE and body["refresh_token"]
    me = client.get("/users/me", headers=Actions.bearer(body["access_token"]))
    assert me.status_code == 200 and me.json["username"] == "alice"
    id_token = pyjwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_token["aud"] == tv.client_id and id_token["preferred_username"] == "alice"
    assert id_token["auth_time"] <= id_token["iat"]
    # Spent: a second exchange is refused, and the first tokens keep working.
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": tv.client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.json
    # A login like any other: /account lists the device, and signing it out there ends it.
    account = client.get("/account")
    assert "Living Room TV" in account.text
    client.post(
        "/account/apps/sign-out",
        data={"csrf_token": csrf_of(account.text), "client_id": tv.client_id},
    )
    me = client.get("/users/me", headers=Actions.bearer(refreshed.json["access_token"]))
    assert me.status_code == 401


def _poll_live(server: LiveServer, tv: RegisteredClient, device_code: str) -> requests.Response:
    return requests.post(
        f"{server.url}/oauth/token",
        data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": tv.client_id},
        headers={"Connection": "close"},  # each poll free to reach either worker
        timeout=30,
    )


def test_polls_racing_on_both_gunicorn_workers_get_the_tokens_once(
    live_server: LiveServer, device: Device, tv: RegisteredClient
) -> None:
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    start = threading.Barrier(8)
    answers: list[tuple[int, str | None]] = []

    def poll() -> None:
        start.wait()
        response = _poll_live(live_server, tv, codes["device_code"])
        answers.append((response.status_code, response.json().get("error")))

    racers = [threading.Thread(target=poll) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(answers, key=str) == [(200, None)] + [(400, "invalid_grant")] * 7


def test_slow_down_raises_the_interval_for_every_worker(
    live_server: LiveServer, device: Device, tv: RegisteredClient
) -> None:
    code = device.codes()["device_code"]
    answers = [_poll_live(live_server, tv, code).json() for _ in range(5)]
    assert answers[0]["error"] == "authorization_pending"
    # Polled at once: each poll is too soon, and each adds 5 s, whichever worker answers it.
    for waited, answer in zip((10, 15, 20, 25), answers[1:], strict=True):
        assert answer["error"] == "slow_down"
        assert f"wait {waited} seconds" in answer["error_description"]


def test_a_refreshed_id_token_names_the_approvers_sign_in(
    device: Device, client: FlaskClient, tv: RegisteredClient
) -> None:
    codes = device.codes()
    device.flow.login()
    device.answer(codes["user_code"])
    body = device.poll(codes["device_code"]).json
    first = pyjwt.decode(body["id_token"], options={"verify_signature": False})
    assert first["sid"]  # the approver's browser session, as a code's id_token names it
    later = datetime.now(UTC) + timedelta(hours=2)
    with time_machine.travel(later, tick=False):
        refreshed = client.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": tv.client_id,
            },
        )
    assert refreshed.status_code == 200, refreshed.json
    claims = pyjwt.decode(refreshed.json["id_token"], options={"verify_signature": False})
    assert claims["iat"] >= first["iat"] + 2 * 3600
    assert (claims["auth_time"], claims["sid"]) == (first["auth_time"], first["sid"])


def test_a_denied_code_answers_access_denied_and_cannot_be_allowed_after(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    denied = device.answer(codes["user_code"], "deny")
    assert denied.status_code == 200 and "denied" in denied.text
    assert _error(device.poll(codes["device_code"])) == "access_denied"
    again = device.enter(codes["user_code"])  # this browser is shown its answer, no question
    assert again.status_code == 200 and "Request denied" in again.text
    assert 'value="allow"' not in again.text
    assert _error(device.poll(codes["device_code"])) == "access_denied"


def test_an_allowed_code_cannot_be_answered_again(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    question = device.enter(codes["user_code"])
    token = csrf_of(question.text)
    form = {"csrf_token": token, "user_code": codes["user_code"]}
    assert device.client.post("/device", data={**form, "decision": "allow"}).status_code == 200
    second = device.client.post("/device", data={**form, "decision": "deny"})
    assert second.status_code == 400 and "not valid" in second.text
    assert device.poll(codes["device_code"]).status_code == 200  # still allowed


@pytest.mark.parametrize(("decision", "outcome"), [("allow", "connected"), ("deny", "denied")])
def test_the_same_answer_sent_again_from_its_browser_is_that_answer(
    device: Device, decision: str, outcome: str
) -> None:
    # A double click on Allow, or the form sent again after Back, is no wrong code.
    codes = device.codes()
    device.flow.login()
    question = device.enter(codes["user_code"])
    form = {"csrf_token": csrf_of(question.text), "user_code": codes["user_code"]}
    for _ in range(2):
        again = device.client.post("/device", data={**form, "decision": decision})
        assert again.status_code == 200 and outcome in again.text
    typed_again = device.client.post("/device", data=form)  # the code's form, after Back
    assert typed_again.status_code == 200 and outcome in typed_again.text
    polled = device.poll(codes["device_code"])
    assert polled.status_code == (200 if decision == "allow" else 400)


def test_another_browser_cannot_resend_an_answer_it_did_not_give(
    app: Flask, device: Device
) -> None:
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    other = Device(app, app.test_client(), device.oauth_client)
    other.flow.login()  # the same user, another browser session
    token = csrf_of(other.client.get("/device").text)
    form = {"csrf_token": token, "user_code": codes["user_code"], "decision": "allow"}
    refused = other.client.post("/device", data=form)
    assert refused.status_code == 400 and "not valid" in refused.text
    del form["decision"]
    typed = other.client.post("/device", data=form)
    assert typed.status_code == 400 and "not valid" in typed.text


def test_an_expired_code_answers_expired_token_and_cannot_be_allowed(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    later = datetime.now(UTC) + timedelta(seconds=DEVICE_CODE_TTL + 1)
    with time_machine.travel(later, tick=False):
        assert _error(device.poll(codes["device_code"])) == "expired_token"
        assert device.enter(codes["user_code"]).status_code == 400


def test_an_allowed_code_expires_unexchanged(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    device.answer(codes["user_code"])
    later = datetime.now(UTC) + timedelta(seconds=DEVICE_CODE_TTL + 1)
    with time_machine.travel(later, tick=False):
        assert _error(device.poll(codes["device_code"])) == "expired_token"


def test_another_clients_code_is_unknown_to_it_and_left_alone(
    device: Device, actions: Actions
) -> None:
    codes = device.codes()
    thief = actions.oauth_client("Thief", public=True, grants=(DEVICE_GRANT,), scope="junk:read")
    assert _error(device.poll(codes["device_code"], thief)) == "invalid_grant"
    device.flow.login()
    device.answer(codes["user_code"])
    assert _error(device.poll(codes["device_code"], thief)) == "invalid_grant"
    # The foreign polls neither spent the code nor counted as the owner's polls.
    assert device.poll(codes["device_code"]).status_code == 200


@pytest.mark.parametrize("device_code", ["no-such-code", "x" * 600, "caf\u00e9", " "])
def test_an_unknown_device_code_is_invalid_grant(device: Device, device_code: str) -> None:
    device.codes()
    assert _error(device.poll(device_code)) == "invalid_grant"


def test_a_poll_without_device_code_is_invalid_request(device: Device) -> None:
    response = device.client.post(
        "/oauth/token",
        data={"grant_type": DEVICE_GRANT, "client_id": device.oauth_client.client_id},
    )
    assert _error(response) == "invalid_request"
    assert response.json["error_description"] == "'device_code' is required"


def test_a_client_without_the_grant_cannot_poll(device: Device, actions: Actions) -> None:
    codes = device.codes()
    other = actions.oauth_client("Web", public=True, grants=("password",))
    assert _error(device.poll(codes["device_code"], other)) == "unauthorized_client"


def test_the_device_flow_works_with_the_password_grant_off(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    actions.user("alice")
    app = make_app(password_grant=False)
    device = Device(app, app.test_client(), tv)
    codes = device.codes()
    device.flow.login()
    device.answer(codes["user_code"])
    assert device.poll(codes["device_code"]).status_code == 200
    password = device.client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": "x"},
    )
    assert password.status_code == 400 and password.json["error"] == "unsupported_grant_type"
    grants = device.client.get("/.well-known/oauth-authorization-server").json
    assert DEVICE_GRANT in grants["grant_types_supported"]
    assert "password" not in grants["grant_types_supported"]


# --- the /device page --------------------------------------------------------------------------


def test_the_page_sends_the_user_to_sign_in_and_back_with_the_code(device: Device) -> None:
    codes = device.codes()
    complete = urlsplit(codes["verification_uri_complete"])
    asked = device.client.get(f"{complete.path}?{complete.query}")
    assert asked.status_code == 302
    login = urlsplit(asked.headers["Location"])
    assert login.path == "/login"
    back = parse_qs(login.query)["next"][0]
    assert back == f"/device?user_code={codes['user_code']}"
    signed_in = device.flow.login(next=back)
    assert signed_in.headers["Location"] == back
    page = device.client.get(back)
    assert page.status_code == 200
    # Filled in, to be confirmed: the page never looks the code up on a GET.
    assert f'value="{codes["user_code"]}"' in page.text and "Living Room TV" not in page.text
    assert 'name="user_code"' in page.text


def test_the_question_names_the_app_and_its_scopes_in_words(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    typed = codes["user_code"].lower().replace("-", " ")
    question = device.enter(typed)
    assert question.status_code == 200
    html = question.text
    assert "Living Room TV" in html and "See your username" in html and "Read your junk" in html
    assert 'name="decision" value="allow"' in html and 'name="decision" value="deny"' in html
    assert codes["user_code"] in html  # shown to compare with the device's screen
    assert _error(device.poll(codes["device_code"])) == "authorization_pending"


def test_a_self_registered_device_app_is_marked_unchecked(
    device: Device, runner: FlaskCliRunner
) -> None:
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    metadata = {
        "client_name": "Living Room TV",  # the operator's TV app's name, taken by anyone
        "grant_types": [DEVICE_GRANT],
        "token_endpoint_auth_method": "none",
        "scope": SCOPE,
    }
    headers = {"Authorization": f"Bearer {token}"}
    registered = device.client.post("/oauth/register", json=metadata, headers=headers)
    assert registered.status_code == 201, registered.json
    impostor = RegisteredClient(registered.json["client_id"], None)
    operators, impostors = device.codes(), device.start(impostor).json
    device.flow.login()
    assert "registered itself" not in device.enter(operators["user_code"]).text
    asked = device.enter(impostors["user_code"])
    assert asked.status_code == 200 and "This app registered itself" in asked.text


def test_an_approval_brings_only_the_scope_its_app_still_registers(
    device: Device, runner: FlaskCliRunner
) -> None:
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    metadata = {
        "grant_types": [DEVICE_GRANT],
        "token_endpoint_auth_method": "none",
        "scope": "junk:read junk:write",
    }
    registered = device.client.post(
        "/oauth/register", json=metadata, headers={"Authorization": f"Bearer {token}"}
    ).json
    app = RegisteredClient(registered["client_id"], None)
    management = {"Authorization": f"Bearer {registered['registration_access_token']}"}
    path = f"/oauth/register/{app.client_id}"

    def register_scope(scope: str) -> None:
        update = {**metadata, "client_id": app.client_id, "scope": scope}
        assert device.client.put(path, json=update, headers=management).status_code == 200

    device.flow.login()
    narrowed, gone = device.codes(client=app), device.codes(client=app)
    for codes in (narrowed, gone):
        assert device.answer(codes["user_code"]).status_code == 200
    # RFC 7592: the app narrowed its own scope since its user allowed it; as its refresh
    # tokens do, the approval brings what is left.
    register_scope("junk:read")
    tokens = device.poll(narrowed["device_code"], app)
    assert tokens.status_code == 200, tokens.json
    assert tokens.json["scope"] == "junk:read"
    # Nothing left: refused before the code is spent.
    register_scope("openid")
    assert _error(device.poll(gone["device_code"], app)) == "invalid_scope"
    register_scope("junk:write")
    kept = device.poll(gone["device_code"], app)
    assert kept.status_code == 200 and kept.json["scope"] == "junk:write", kept.json


def test_a_wrong_code_shows_a_message(device: Device) -> None:
    device.codes()
    device.flow.login()
    for wrong in ("BCDF-GHJK", "AEIO-UAEI", "<script>", "x" * 100):
        response = device.enter(wrong)
        assert response.status_code == 400 and "not valid" in response.text, wrong
        assert "<script>" not in response.text


def test_the_decision_needs_a_csrf_token(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    device.enter(codes["user_code"])
    forged = device.client.post(
        "/device", data={"user_code": codes["user_code"], "decision": "allow"}
    )
    assert forged.status_code == 403
    wrong = device.client.post(
        "/device",
        data={"user_code": codes["user_code"], "decision": "allow", "csrf_token": "forged"},
    )
    assert wrong.status_code == 403
    assert _error(device.poll(codes["device_code"])) == "authorization_pending"


def test_a_decision_other_than_allow_or_deny_is_refused(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    question = device.enter(codes["user_code"])
    response = device.client.post(
        "/device",
        data={
            "csrf_token": csrf_of(question.text),
            "user_code": codes["user_code"],
            "decision": "maybe",
        },
    )
    assert response.status_code == 400
    assert _error(device.poll(codes["device_code"])) == "authorization_pending"


def test_a_disabled_user_cannot_approve(device: Device, runner: FlaskCliRunner) -> None:
    codes = device.codes()
    device.flow.login()
    question = device.enter(codes["user_code"])
    runner.invoke(args=["users", "disable", "alice"])
    response = device.client.post(
        "/device",
        data={
            "csrf_token": csrf_of(question.text),
            "user_code": codes["user_code"],
            "decision": "allow",
        },
    )
    assert response.status_code == 303 and response.headers["Location"].startswith("/login?")
    assert _error(device.poll(codes["device_code"])) == "authorization_pending"


def test_a_user_disabled_after_approving_gets_no_tokens(
    device: Device, runner: FlaskCliRunner
) -> None:
    codes = device.codes()
    device.flow.login()
    device.answer(codes["user_code"])
    runner.invoke(args=["users", "disable", "alice"])
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"
    runner.invoke(args=["users", "enable", "alice"])
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"  # the code died


def test_an_approval_dies_with_the_browser_session_that_gave_it(device: Device) -> None:
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    token = csrf_of(device.client.get("/account").text)
    signed_out = device.client.post("/account/sign-out-everywhere", data={"csrf_token": token})
    assert signed_out.status_code == 303
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"


def _before_storing(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> None:
    """Run `action` after a poll spends its device code, just before its tokens are stored."""
    store_issued = issuing.store_issued

    def action_first(*args: Any, **kwargs: Any) -> Any:
        action()
        return store_issued(*args, **kwargs)

    monkeypatch.setattr(issuing, "store_issued", action_first)


def test_a_reset_landing_between_the_poll_and_its_tokens_leaves_none(
    app: Flask, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device code is spent, and its tokens not yet stored, when the operator's reset
    # commits: they are never stored.
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    _before_storing(
        monkeypatch, lambda: accounts.reset_password("alice", "a different long passphrase")
    )
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"
    with app.app_context():
        assert lookups.signed_in_apps(accounts.get("alice").id) == []


def test_wrong_codes_are_limited_per_ip_and_per_browser_session(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    actions.user("alice")
    app = make_app(ratelimit_enabled=True, ratelimit_user_code="3/hour")
    device = Device(app, app.test_client(), tv)
    codes = device.codes()
    device.flow.login()
    for _ in range(3):
        assert device.enter("BCDF-GHJK").status_code == 400
    limited = device.enter(codes["user_code"])  # even the right code: the budget is spent
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert int(limited.headers["Retry-After"]) >= 1
    # The same browser session from another address: its own budget is spent too.
    device.client.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert device.enter(codes["user_code"]).status_code == 429
    # Another browser at another address still gets its answer.
    fresh = Device(app, app.test_client(), tv)
    fresh.client.environ_base["REMOTE_ADDR"] = "10.0.0.3"
    fresh.flow.login()
    assert fresh.enter(codes["user_code"]).status_code == 200


def test_right_codes_do_not_count_toward_the_limit(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    actions.user("alice")
    app = make_app(ratelimit_enabled=True, ratelimit_user_code="2/hour")
    device = Device(app, app.test_client(), tv)
    codes = device.codes()
    device.flow.login()
    for _ in range(4):
        assert device.enter(codes["user_code"]).status_code == 200


def _signed_in_browser(app: Flask) -> tuple[str, str]:
    """A new browser session of alice's: its Cookie header and the CSRF token its forms carry."""
    client = app.test_client()
    Flow(app, client).login()
    cookies = {
        name: client.get_cookie(name) for name in ("tokenserver_session", "tokenserver_csrf")
    }
    assert all(cookies.values()), cookies
    header = "; ".join(f"{name}={cookie.value}" for name, cookie in cookies.items() if cookie)
    csrf = cookies["tokenserver_csrf"]
    return header, csrf.value if csrf else ""


def _wrong_codes_at_once(post: Any, browsers: list[tuple[str, str]]) -> list[int]:
    """Each browser posts a different wrong code, all at the same moment; the statuses."""
    start = threading.Barrier(len(browsers))
    statuses: list[int] = []

    def guess(n: int, cookie: str, csrf: str) -> None:
        code = f"BCDF-GHJ{USER_CODE_ALPHABET[n % len(USER_CODE_ALPHABET)]}"
        start.wait()
        statuses.append(post(n, {"csrf_token": csrf, "user_code": code}, {"Cookie": cookie}))

    threads = [
        threading.Thread(target=guess, args=(n, *browser)) for n, browser in enumerate(browsers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


@pytest.mark.parametrize("per", ["ip", "browser session"])
def test_wrong_codes_sent_at_once_are_checked_no_more_than_the_limit(
    make_app: Any, actions: Actions, per: str
) -> None:
    actions.user("alice")
    app = make_app(ratelimit_enabled=True, ratelimit_user_code="3/hour")
    if per == "ip":  # 24 browsers behind one address
        browsers = [_signed_in_browser(app) for _ in range(24)]
        addresses = ["10.0.0.2"] * 24
    else:  # one browser session, through 24 addresses
        browsers = [_signed_in_browser(app)] * 24
        addresses = [f"10.0.1.{n}" for n in range(24)]

    def post(n: int, form: dict[str, str], headers: dict[str, str]) -> int:
        client = app.test_client(use_cookies=False)
        environ = {"REMOTE_ADDR": addresses[n]}
        return client.post("/device", data=form, headers=headers, environ_base=environ).status_code

    # Counted when checked, not when answered: 3 are looked up and found wrong, 21 refused.
    assert _wrong_codes_at_once(post, browsers) == [400] * 3 + [429] * 21


def test_parallel_wrong_codes_are_limited_across_gunicorn_workers(
    live_server_factory: Any, app: Flask, actions: Actions, tv: RegisteredClient, redis_prefix: str
) -> None:
    actions.user("alice")
    browsers = [_signed_in_browser(app) for _ in range(16)]
    server = live_server_factory(
        TOKENSERVER_RATELIMIT_ENABLED="true",
        TOKENSERVER_RATELIMIT_USER_CODE="2/hour",
        TOKENSERVER_RATELIMIT_STORAGE_URI=REDIS_URL,
        TOKENSERVER_RATELIMIT_KEY_PREFIX=redis_prefix,
    )

    def post(n: int, form: dict[str, str], headers: dict[str, str]) -> int:
        return requests.post(
            f"{server.url}/device", data=form, headers=headers, timeout=30
        ).status_code

    started = requests.post(
        f"{server.url}/oauth/device_authorization", data={"client_id": tv.client_id}, timeout=10
    )
    right = {"user_code": started.json()["user_code"]}
    for _ in range(4):  # a right code is given back each time, in the count every worker reads
        cookie, csrf = browsers[0]
        assert post(0, {"csrf_token": csrf, **right}, {"Cookie": cookie}) == 200
    # 2 workers of 4 threads each take 8 at once; the count in Redis lets 2 be checked.
    assert _wrong_codes_at_once(post, browsers) == [400] * 2 + [429] * 14


def test_a_count_given_back_after_its_window_ended_gives_the_next_no_extra_guess(
    make_app: Any, actions: Actions, tv: RegisteredClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    actions.user("alice")
    app = make_app(ratelimit_enabled=True, ratelimit_user_code="2/hour")
    device = Device(app, app.test_client(), tv)
    with time_machine.travel(datetime.now(UTC), tick=False) as clock:
        codes = device.codes()
        device.flow.login()
        lookup = devices.pending

        def the_hour_ends_during(user_code: str) -> Any:
            found = lookup(user_code)
            clock.shift(timedelta(hours=1, seconds=1))
            return found

        monkeypatch.setattr(devices, "pending", the_hour_ends_during)
        assert device.enter(codes["user_code"]).status_code == 200  # counted, then given back
        monkeypatch.undo()
        statuses = [device.enter("BCDF-GHJK").status_code for _ in range(3)]
    assert statuses == [400, 400, 429]


def test_polling_devices_leave_the_ips_token_failure_budget_alone(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    # The shipped limits: 20 failed token requests a minute and 200 an hour per IP. Three
    # devices set up from one address poll some 250 times in the hour, as RFC 8628 says.
    actions.user("alice")
    web = actions.oauth_client("web")
    app = make_app(ratelimit_enabled=True)
    device = Device(app, app.test_client(), tv)
    device.flow.login()
    answers: list[str] = []
    with time_machine.travel(datetime.now(UTC), tick=False) as clock:

        def poll_every(interval: int, times: int, device_code: str) -> None:
            for _ in range(times):
                clock.shift(timedelta(seconds=interval))
                answers.append(_error(device.poll(device_code)))

        waiting = device.codes()  # nobody answers: pending until it expires
        poll_every(POLL_INTERVAL, DEVICE_CODE_TTL // POLL_INTERVAL + 2, waiting["device_code"])
        denied = device.codes()  # too eager at first, then denied, and it keeps on polling
        poll_every(POLL_INTERVAL, 1, denied["device_code"])
        poll_every(2, 1, denied["device_code"])  # slow_down: 5 seconds more from now on
        poll_every(POLL_INTERVAL + 5, 6, denied["device_code"])
        device.answer(denied["user_code"], "deny")
        poll_every(POLL_INTERVAL + 5, 55, denied["device_code"])
        allowed = device.codes()  # allowed after five minutes
        poll_every(POLL_INTERVAL, 60, allowed["device_code"])
        device.answer(allowed["user_code"])
        clock.shift(timedelta(seconds=POLL_INTERVAL))
        assert device.poll(allowed["device_code"]).status_code == 200
        password_login = actions.token(web, "alice")
    assert len(answers) > 200
    assert set(answers) == {"authorization_pending", "slow_down", "access_denied", "expired_token"}
    assert password_login.status_code == 200, password_login.json


def test_polls_with_unknown_device_codes_count_as_failures(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    actions.user("alice")
    web = actions.oauth_client("web")
    app = make_app(ratelimit_enabled=True)  # shipped: 20 failures a minute per IP
    device = Device(app, app.test_client(), tv)
    live = device.codes()["device_code"]
    for n in range(20):
        assert _error(device.poll(f"{live[:-3]}{n:03}")) == "invalid_grant"
    limited = device.poll(live)
    assert limited.status_code == 429 and limited.json["error"] == "too_many_requests"
    assert Actions(app, device.client).token(web, "alice").status_code == 429


@pytest.mark.parametrize("store", ["database", "redis"])
def test_polls_with_a_replayed_dpop_proof_count_as_failures(
    make_app: Any, actions: Actions, tv: RegisteredClient, redis_prefix: str, store: str
) -> None:
    shared = {"ratelimit_storage_uri": REDIS_URL, "ratelimit_key_prefix": redis_prefix}
    app = make_app(
        ratelimit_enabled=True,
        ratelimit_token_failures="3/minute",
        **(shared if store == "redis" else {}),
    )
    device = Device(app, app.test_client(), tv)
    device_code = device.codes()["device_code"]
    proof = Prover().proof("POST", "http://localhost:8000/oauth/token")
    polls = [
        device.client.post(
            "/oauth/token",
            data={
                "client_id": tv.client_id,
                "grant_type": DEVICE_GRANT,
                "device_code": device_code,
            },
            headers={"DPoP": proof},
        )
        for _ in range(5)
    ]
    answers = [(poll.status_code, poll.json["error"]) for poll in polls]
    # The first poll is a genuine one; each replay of its proof is a failure.
    assert answers == [
        (400, "authorization_pending"),
        (400, "invalid_dpop_proof"),
        (400, "invalid_dpop_proof"),
        (400, "invalid_dpop_proof"),
        (429, "too_many_requests"),
    ]


def test_device_authorization_is_limited_per_ip(
    make_app: Any, actions: Actions, tv: RegisteredClient
) -> None:
    app = make_app(ratelimit_enabled=True, ratelimit_default="2/minute")
    device = Device(app, app.test_client(), tv)
    assert device.start().status_code == 200
    assert device.start().status_code == 200
    limited = device.start()
    assert limited.status_code == 429 and limited.json["error"] == "too_many_requests"


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("BCDF-GHJK", "BCDFGHJK"),
        ("bcdf-ghjk", "BCDFGHJK"),
        ("bcdfghjk", "BCDFGHJK"),
        (" BCDF GHJK ", "BCDFGHJK"),
        ("B-C-D-F-G-H-J-K", "BCDFGHJK"),
        ("ＢＣＤＦ－ＧＨＪＫ", "BCDFGHJK"),  # typed on a full-width (East Asian) keyboard
        ("bcdf\u2013ghjk", "BCDFGHJK"),  # an en dash, as a phone or a text may write it
        ("BCDF\u2011GHJK", "BCDFGHJK"),  # a non-breaking hyphen
        ("BCDF_GHJK", None),  # other punctuation is not ours
        ("BCDF-GHJ", None),
        ("BCDF-GHJKL", None),
        ("ABCD-EFGH", None),  # vowels are not in the alphabet
        ("BCDF-GHJ1", None),
        ("", None),
    ],
)
def test_user_codes_are_read_case_and_hyphen_blind(typed: str, stored: str | None) -> None:
    assert normalize_user_code(typed) == stored


# --- administration ----------------------------------------------------------------------------


def test_clients_create_accepts_the_device_grant(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=["clients", "create", "TV", "--public", "--grant", DEVICE_GRANT, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["grant_types"] == [DEVICE_GRANT]


def test_metadata_names_the_device_endpoint(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        body = client.get(path).json
        assert (
            body["device_authorization_endpoint"]
            == "http://localhost:8000/oauth/device_authorization"
        )
        assert DEVICE_GRANT in body["grant_types_supported"]


def test_purge_deletes_expired_device_authorizations(
    app: Flask, device: Device, runner: FlaskCliRunner
) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    with time_machine.travel(old, tick=False):
        device.codes()
    device.codes()  # live
    result = runner.invoke(args=["tokens", "purge"])
    assert result.exit_code == 0 and "1 device authorization and" in result.output
    assert len(_stored(app)) == 1


def test_the_flow_is_audited_and_no_code_reaches_the_logs(
    device: Device, tv: RegisteredClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # everything the service logs in production, and more
    codes = device.codes()
    device.flow.login()
    device.answer(codes["user_code"])
    tokens = device.poll(codes["device_code"]).json
    formatter = JSONFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    events = [json.loads(line) for line in lines if '"event": "device.' in line]
    assert [e["event"] for e in events] == ["device.authorization_started", "device.allowed"]
    assert events[1]["client_id"] == tv.client_id and events[1]["username"] == "alice"
    assert any('"grant_type": "urn:ietf:params:oauth:grant-type:device_code"' in x for x in lines)
    user_code = codes["user_code"]
    for secret in (
        codes["device_code"],
        user_code,
        user_code.replace("-", ""),
        tokens["access_token"],
        tokens["refresh_token"],
    ):
        assert not [line for line in lines if secret in line]


@pytest.mark.parametrize("how", ["users set-password", "POST /users/me/password"])
def test_a_new_password_withdraws_approvals_not_yet_exchanged(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, actions: Actions, how: str
) -> None:
    # Whoever approved the device may have held the old password: its poll is refused.
    tv = actions.oauth_client(
        "TV", public=True, grants=(DEVICE_GRANT, "refresh_token"), scope=SCOPE
    )
    session = actions.login("alice")
    device = Device(app, client, tv)
    codes = device.codes(scope=SCOPE)
    assert device.flow.login("alice").status_code == 303
    assert device.answer(codes["user_code"]).status_code == 200
    new = "a different long passphrase"
    if how == "users set-password":
        done = runner.invoke(args=["users", "set-password", "alice", "--password-stdin"], input=new)
        assert done.exit_code == 0, done.output
    else:
        changed = client.post(
            "/users/me/password",
            json={"current_password": PASSWORD, "new_password": new},
            headers=actions.bearer(session["access_token"]),
        )
        assert changed.status_code == 204
    polled = device.poll(codes["device_code"])
    assert polled.status_code == 400 and polled.json["error"] == "access_denied"


def test_signing_the_app_out_withdraws_its_approvals_not_yet_exchanged(
    device: Device, actions: Actions
) -> None:
    other = actions.oauth_client("Radio", public=True, grants=(DEVICE_GRANT,), scope=SCOPE)
    codes, other_codes = device.codes(), device.start(other).json
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    assert device.answer(other_codes["user_code"]).status_code == 200
    form = {
        "csrf_token": csrf_of(device.client.get("/account").text),
        "client_id": device.oauth_client.client_id,
    }
    assert device.client.post("/account/apps/sign-out", data=form).status_code == 303
    assert _error(device.poll(codes["device_code"])) == "access_denied"
    # Another app's approval stands: the user signed out of one app only.
    assert device.poll(other_codes["device_code"], other).status_code == 200


def _approved_in_a_session(device: Device) -> tuple[dict[str, Any], str]:
    """A device's codes, approved by alice signed in at /device: (codes, session cookie)."""
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    cookie = device.client.get_cookie("tokenserver_session")
    assert cookie is not None
    return codes, cookie.value


def test_an_app_signed_out_between_the_poll_and_its_tokens_gets_none(
    app: Flask, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device code is spent, and its tokens not yet stored, when the user signs the app out
    # at /account: they are never stored.
    codes, session_cookie = _approved_in_a_session(device)

    def sign_out() -> None:
        session = signin.current(session_cookie)
        assert session is not None
        signin.sign_out_app(session, device.oauth_client.client_id)

    _before_storing(monkeypatch, sign_out)
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"
    monkeypatch.undo()
    with app.app_context():
        assert lookups.signed_in_apps(accounts.get("alice").id) == []
    assert _error(device.poll(codes["device_code"])) == "invalid_grant"  # spent, not waiting


def _racing_the_store(
    app: Flask, monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]
) -> list[threading.Thread]:
    """Once a poll has read that its session is signed in and its approval stands, run
    `action` on another thread, and let the poll store its tokens once `action` has finished
    or waits for the poll's transaction (the thread is listed, to join)."""
    still_allowed = store_devices.still_allowed
    racers: list[threading.Thread] = []

    def then_race(conn: Any, device_code_hash: str) -> bool:
        allowed = still_allowed(conn, device_code_hash)
        racers.append(run_behind(app, conn, action))
        return allowed

    monkeypatch.setattr(store_devices, "still_allowed", then_race)
    return racers


@pytest.mark.parametrize("sign_out", ["app", "everywhere", "password reset"])
def test_a_sign_out_landing_while_a_polls_tokens_are_stored_ends_them(
    app: Flask, device: Device, monkeypatch: pytest.MonkeyPatch, sign_out: str
) -> None:
    # The poll has read that the user is signed in and the approval stands; a sign-out then
    # waits for its tokens to be stored and revokes them, or lands first and none are stored.
    codes, session_cookie = _approved_in_a_session(device)

    def signing_out() -> None:
        if sign_out == "password reset":
            accounts.reset_password("alice", "a different long passphrase")
            return
        session = signin.current(session_cookie)
        assert session is not None
        if sign_out == "app":
            signin.sign_out_app(session, device.oauth_client.client_id)
        else:
            signin.sign_out_everywhere(session)

    racers = _racing_the_store(app, monkeypatch, signing_out)
    polled = device.poll(codes["device_code"])
    monkeypatch.undo()
    for racer in racers:
        racer.join()
    assert len(racers) == 1
    with app.app_context():
        assert lookups.signed_in_apps(accounts.get("alice").id) == []
    if polled.status_code == 200:
        refreshed = device.client.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": polled.json["refresh_token"],
                "client_id": device.oauth_client.client_id,
            },
        )
        assert _error(refreshed) == "invalid_grant"
    else:
        assert _error(polled) == "invalid_grant"


def test_a_password_changed_in_the_approving_session_keeps_its_approval(device: Device) -> None:
    # The user proved the password in this very session: what they approved here stands.
    codes = device.codes()
    device.flow.login()
    assert device.answer(codes["user_code"]).status_code == 200
    new = "a different long passphrase"
    form = {
        "csrf_token": csrf_of(device.client.get("/account").text),
        "current_password": PASSWORD,
        "new_password": new,
        "confirm_password": new,
    }
    assert device.client.post("/account/password", data=form).status_code == 303
    assert device.poll(codes["device_code"]).status_code == 200
