"""Pushed authorization requests (RFC 9126): checked when pushed, carried by reference, answered
by one browser."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select

from tokenserver.browser_models import PushedAuthorization
from tokenserver.extensions import db
from tokenserver.oauth.pushed import LIFETIME, REQUEST_URI_PREFIX

from .helpers import REDIRECT, Flow, Prover, authorization_request, csrf_of, pkce, query_of

OTHER_REDIRECT = "https://app.example.com/other"


def _pushed(flow: Flow, client_id: str, secret: str | None, challenge: str, **params: Any) -> str:
    """Push an authorization request (a confidential client with Basic); its request_uri."""
    body = authorization_request(client_id, challenge, **params)
    if secret:
        body.pop("client_id")
    auth = (client_id, secret) if secret else None
    response = flow.client.post("/oauth/par", data=body, auth=auth)
    assert response.status_code == 201, response.json
    return str(response.json["request_uri"])


def _by_reference(flow: Flow, client_id: str, request_uri: str, **extra: str) -> Any:
    query = {"client_id": client_id, "request_uri": request_uri, **extra}
    return flow.client.get("/oauth/authorize?" + urlencode(query))


def _elsewhere(flow: Flow) -> Flow:
    """Another browser: a cookie jar of its own, signed in as no one yet."""
    return Flow(flow.app, flow.app.test_client())


def _answer(flow: Flow, to_consent: str, csrf: str, decision: str = "allow") -> Any:
    """POST a decision at /consent with a token from a page shown before, as a second click or
    the form sent again after Back does."""
    return flow.client.post(to_consent, data={"csrf_token": csrf, "decision": decision})


@dataclass(frozen=True)
class _Asked:
    """A pushed request of an app that asks (not first-party), its user on /consent."""

    client_id: str
    secret: str
    verifier: str
    request_uri: str
    to_consent: str
    csrf: str


def _asked(flow: Flow) -> _Asked:
    client_id, secret = flow.register()
    verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    flow.login()
    to_consent = _by_reference(flow, client_id, request_uri).headers["Location"]
    csrf = csrf_of(flow.client.get(to_consent).text)
    return _Asked(client_id, secret, verifier, request_uri, to_consent, csrf)


def _stored(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(PushedAuthorization)))


def test_a_pushed_request_signs_the_user_in_and_its_code_is_exchanged(
    flow: Flow, app: Flask
) -> None:
    client_id, secret = flow.register()
    verifier, challenge = pkce()
    pushed = flow.client.post(
        "/oauth/par",
        data=authorization_request(client_id, challenge, nonce="n-1") | {"client_id": client_id},
        auth=(client_id, secret),
    )
    assert pushed.status_code == 201 and pushed.headers["Cache-Control"] == "no-store"
    assert pushed.json["expires_in"] == LIFETIME
    request_uri = pushed.json["request_uri"]
    assert request_uri.startswith(REQUEST_URI_PREFIX)
    # The browser carries the reference only: to /login, back, and on to /consent.
    to_login = _by_reference(flow, client_id, request_uri)
    back = parse_qs(urlsplit(to_login.headers["Location"]).query)["next"][0]
    assert set(query_of(back)) == {"client_id", "request_uri"}
    flow.login(next=back)
    to_consent = flow.client.get(back)
    assert to_consent.headers["Location"].startswith("/consent?")
    assert set(query_of(to_consent.headers["Location"])) == {"client_id", "request_uri"}
    answered = flow.consent(to_consent.headers["Location"])
    query = query_of(answered.headers["Location"])
    assert answered.headers["Location"].startswith(REDIRECT) and query["state"] == "st-1"
    exchanged = flow.exchange(client_id, secret, query["code"], verifier)
    assert exchanged.status_code == 200, exchanged.json
    assert exchanged.json["scope"] == "openid profile junk:read" and exchanged.json["id_token"]
    # Once answered, the request_uri is spent: another browser or a replayed link gets a page.
    again = _by_reference(_elsewhere(flow), client_id, request_uri)
    assert again.status_code == 400 and "expired or has been used" in again.text
    assert _stored(app) == 1


def test_what_the_browser_adds_to_a_pushed_request_is_ignored(flow: Flow) -> None:
    client_id, secret = flow.register(REDIRECT, OTHER_REDIRECT, first_party=True)
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, scope="junk:read")
    flow.login()
    answered = _by_reference(
        flow,
        client_id,
        request_uri,
        scope="junk:read junk:write",
        redirect_uri=OTHER_REDIRECT,
        state="forged",
        prompt="none",
    )
    location = answered.headers["Location"]
    assert location.startswith(REDIRECT + "?") and query_of(location)["state"] == "st-1"


@pytest.mark.parametrize(
    "request_uri",
    [
        REQUEST_URI_PREFIX + "not-one-we-made",
        REQUEST_URI_PREFIX + "x" * 300,
        REQUEST_URI_PREFIX,
    ],
)
def test_an_unknown_request_uri_gets_a_page_never_a_redirect(flow: Flow, request_uri: str) -> None:
    client_id, _ = flow.register(first_party=True)
    flow.login()
    response = _by_reference(flow, client_id, request_uri)
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.mark.parametrize("second", ["same", "other"])
def test_a_reference_naming_its_client_twice_gets_a_page(flow: Flow, second: str) -> None:
    # RFC 6749 §3.1: no parameter more than once; a reference is no exception.
    flow.login()
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    other = client_id if second == "same" else "someone-else"
    query = [("client_id", client_id), ("client_id", other), ("request_uri", request_uri)]
    refused = flow.client.get("/oauth/authorize?" + urlencode(query))
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert "more than once" in refused.text
    # Refused before it was answered: the reference itself still works.
    assert _by_reference(flow, client_id, request_uri).status_code == 302


def test_a_request_uri_works_only_for_the_client_that_pushed_it(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    other_id, _ = flow.register(first_party=True, name="Other App")
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    flow.login()
    refused = _by_reference(flow, other_id, request_uri)
    assert refused.status_code == 400 and "Location" not in refused.headers
    refused_twice = flow.client.get(
        "/oauth/authorize?"
        + urlencode([("client_id", client_id), ("request_uri", request_uri)] * 2)
    )
    assert refused_twice.status_code == 400
    # Neither spent it: its own client still can.
    assert "code" in query_of(_by_reference(flow, client_id, request_uri).headers["Location"])


def test_a_pushed_request_expires(flow: Flow, frozen: Any) -> None:
    client_id, secret = flow.register(first_party=True)
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    flow.login()
    frozen.shift(LIFETIME + 1)
    expired = _by_reference(flow, client_id, request_uri)
    assert expired.status_code == 400 and "expired" in expired.text


@pytest.mark.parametrize("prompt", [{"prompt": "login"}, {"max_age": "0"}])
def test_a_pushed_prompt_to_sign_in_again_is_met_by_signing_in_once(
    flow: Flow, prompt: dict[str, str]
) -> None:
    client_id, secret = flow.register(first_party=True)
    flow.login()  # signed in before the request was pushed
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, **prompt)
    to_login = _by_reference(flow, client_id, request_uri)
    assert to_login.headers["Location"].startswith("/login?")
    back = parse_qs(urlsplit(to_login.headers["Location"]).query)["next"][0]
    flow.login(next=back)
    answered = flow.client.get(back)
    assert "code" in query_of(answered.headers["Location"])  # no second trip to /login


@pytest.mark.parametrize("how", ["prompt=none", "deny"])
def test_an_error_at_the_redirect_uri_answers_a_pushed_request_too(flow: Flow, how: str) -> None:
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    if how == "prompt=none":
        request_uri = _pushed(flow, client_id, secret, challenge, prompt="none")
        answered = _by_reference(flow, client_id, request_uri)
        error = "login_required"
    else:
        request_uri = _pushed(flow, client_id, secret, challenge)
        flow.login()
        to_consent = _by_reference(flow, client_id, request_uri).headers["Location"]
        answered = flow.consent(to_consent, decision="deny")
        error = "access_denied"
    assert query_of(answered.headers["Location"])["error"] == error
    assert _by_reference(_elsewhere(flow), client_id, request_uri).status_code == 400


def test_a_public_client_pushes_with_its_client_id(flow: Flow) -> None:
    client_id, _ = flow.register(public=True, first_party=True)
    verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, None, challenge)
    flow.login()
    code = query_of(_by_reference(flow, client_id, request_uri).headers["Location"])["code"]
    assert flow.exchange(client_id, None, code, verifier).status_code == 200


def test_a_pushed_openid_request_ignores_scopes_we_do_not_know(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    verifier, challenge = pkce()
    scope = "openid profile email"  # OpenID Connect Core §3.1.2.1: email is ignored
    request_uri = _pushed(flow, client_id, secret, challenge, scope=scope)
    flow.login()
    code = query_of(_by_reference(flow, client_id, request_uri).headers["Location"])["code"]
    response = flow.exchange(client_id, secret, code, verifier)
    assert response.status_code == 200 and response.json["scope"] == "openid profile"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"code_challenge": None}, 400, "invalid_request"),  # PKCE, as at /oauth/authorize
        ({"code_challenge_method": "plain"}, 400, "invalid_request"),
        ({"redirect_uri": "https://evil.example/callback"}, 400, "invalid_request"),
        ({"scope": "admin"}, 400, "invalid_scope"),
        ({"response_type": "token"}, 400, "unsupported_response_type"),
        ({"request_uri": REQUEST_URI_PREFIX + "abc"}, 400, "invalid_request"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, 400, "request_not_supported"),
        ({"prompt": "none login"}, 400, "invalid_request"),
        ({"resource": "https://unknown.example/"}, 400, "invalid_target"),
    ],
)
def test_a_bad_push_is_refused_as_json_and_stores_nothing(
    flow: Flow, app: Flask, change: dict[str, Any], status: int, error: str
) -> None:
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge, **change)
    response = flow.client.post("/oauth/par", data=body, auth=(client_id, secret))
    assert response.status_code == status and response.json["error"] == error, response.json
    assert response.json["error_description"]
    assert _stored(app) == 0


@pytest.mark.parametrize(
    "auth",
    [
        ("wrong-secret", True),
        (None, False),  # a confidential client must authenticate: client_id alone is not enough
    ],
)
def test_a_push_without_the_clients_credentials_is_refused(
    flow: Flow, app: Flask, auth: tuple[str | None, bool]
) -> None:
    client_id, _secret = flow.register()
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge)
    secret, basic = auth
    response = flow.client.post(
        "/oauth/par", data=body, auth=(client_id, secret) if basic and secret else None
    )
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    assert _stored(app) == 0


def test_a_push_naming_another_client_is_refused(flow: Flow, app: Flask) -> None:
    client_id, secret = flow.register()
    other_id, _ = flow.register(name="Other App")
    _verifier, challenge = pkce()
    body = authorization_request(other_id, challenge)
    response = flow.client.post("/oauth/par", data=body, auth=(client_id, secret))
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert _stored(app) == 0


def test_metadata_names_the_endpoint(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        document = client.get(path).json
        assert document["pushed_authorization_request_endpoint"].endswith("/oauth/par")
        assert document["require_pushed_authorization_requests"] is False


def test_purge_deletes_pushed_requests_once_expired(
    flow: Flow, app: Flask, runner: FlaskCliRunner, frozen: Any
) -> None:
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    _pushed(flow, client_id, secret, challenge)
    kept = runner.invoke(args=["tokens", "purge"])
    assert "0 pushed authorization requests" in kept.output and _stored(app) == 1
    frozen.shift(LIFETIME + 1)  # dead at once: --older-than (a day by default) is not waited
    purged = runner.invoke(args=["tokens", "purge"])
    assert "1 pushed authorization request and" in purged.output and _stored(app) == 0


def test_a_pushed_max_age_counts_from_the_sign_in(flow: Flow, frozen: Any) -> None:
    client_id, secret = flow.register(first_party=True)
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, max_age="10")
    flow.login()  # after the push, for it
    frozen.shift(250)  # ...but long ago now
    again = _by_reference(flow, client_id, request_uri)
    assert again.headers["Location"].startswith("/login?")


def test_a_dpop_proof_sent_with_the_push_binds_the_code(flow: Flow, app: Flask) -> None:
    client_id, _ = flow.register(public=True, first_party=True)
    verifier, challenge = pkce()
    issuer = app.extensions["tokenserver.settings"].issuer
    prover = Prover()
    body = authorization_request(client_id, challenge)
    proof = prover.proof("POST", f"{issuer}/oauth/par")
    pushed = flow.client.post("/oauth/par", data=body, headers={"DPoP": proof})
    assert pushed.status_code == 201, pushed.json
    flow.login()
    location = _by_reference(flow, client_id, pushed.json["request_uri"]).headers["Location"]
    code = query_of(location)["code"]
    unbound = flow.exchange(client_id, None, code, verifier)  # no proof of the key: refused
    assert unbound.status_code == 400, unbound.json
    assert unbound.json["error"] in ("invalid_dpop_proof", "invalid_grant")


@pytest.mark.parametrize("case", ["another key's dpop_jkt", "a malformed proof"])
def test_a_bad_dpop_proof_with_the_push_is_refused(flow: Flow, app: Flask, case: str) -> None:
    client_id, _ = flow.register(public=True)
    _verifier, challenge = pkce()
    issuer = app.extensions["tokenserver.settings"].issuer
    if case == "a malformed proof":
        body, proof = authorization_request(client_id, challenge), "not.a.proof"
    else:
        body = authorization_request(client_id, challenge, dpop_jkt=Prover().jkt)
        proof = Prover().proof("POST", f"{issuer}/oauth/par")
    response = flow.client.post("/oauth/par", data=body, headers={"DPoP": proof})
    assert response.status_code == 400 and response.json["error"] == "invalid_dpop_proof"
    assert _stored(app) == 0


def test_an_empty_request_uri_or_dpop_jkt_is_pushed_as_if_left_out(flow: Flow, app: Flask) -> None:
    # RFC 6749 §3.2: a parameter sent without a value is treated as if omitted; neither is
    # stored, so the code is bound to no key.
    client_id, _ = flow.register(public=True, first_party=True)
    verifier, challenge = pkce()
    body = authorization_request(client_id, challenge, request_uri="", dpop_jkt="", nonce="")
    pushed = flow.client.post("/oauth/par", data=body)
    assert pushed.status_code == 201, pushed.json
    with app.app_context():
        stored = db.session.scalars(select(PushedAuthorization.parameters)).one()
    assert not {"request_uri", "dpop_jkt", "nonce"} & {name for name, _value in json.loads(stored)}
    flow.login()
    location = _by_reference(flow, client_id, pushed.json["request_uri"]).headers["Location"]
    exchanged = flow.exchange(client_id, None, query_of(location)["code"], verifier)
    assert exchanged.status_code == 200 and exchanged.json["token_type"] == "Bearer"


def test_unknown_parameters_are_not_stored_and_a_huge_request_is_refused(
    flow: Flow, app: Flask
) -> None:
    client_id, _ = flow.register(public=True)
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge) | {"unknown": "x" * 60000}
    assert flow.client.post("/oauth/par", data=body).status_code == 201
    with app.app_context():
        stored = db.session.scalars(select(PushedAuthorization.parameters)).one()
    assert "unknown" not in stored and len(stored) < 1000
    huge = authorization_request(client_id, challenge, state="s" * 9000)
    response = flow.client.post("/oauth/par", data=huge)
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert _stored(app) == 1


def test_a_repeated_unknown_parameter_is_ignored_and_a_repeated_known_one_refused(
    flow: Flow, app: Flask
) -> None:
    client_id, _ = flow.register(public=True)
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge)
    assert flow.client.post("/oauth/par", data=body | {"x_trace": ["1", "2"]}).status_code == 201
    response = flow.client.post("/oauth/par", data=body | {"nonce": ["n", "m"]})
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert "'nonce'" in response.json["error_description"]
    assert _stored(app) == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"resource": "https://unknown.example/"}, "invalid_target"),
        ({"nonce": "n" * 400}, "invalid_request"),
        ({"dpop_jkt": "not-a-thumbprint"}, "invalid_request"),
        ({"prompt": "none login"}, "invalid_request"),
    ],
)
def test_a_prompt_none_push_is_checked_like_any_other(
    flow: Flow, app: Flask, change: dict[str, str], error: str
) -> None:
    client_id, _ = flow.register(public=True)
    _verifier, challenge = pkce()
    body = authorization_request(client_id, challenge, prompt="none") | change
    response = flow.client.post("/oauth/par", data=body)
    assert response.status_code == 400 and response.json["error"] == error, response.json
    assert _stored(app) == 0


def test_a_pushed_login_hint_stays_off_the_sign_in_url(flow: Flow) -> None:
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, login_hint="alice@example.com")
    location = _by_reference(flow, client_id, request_uri).headers["Location"]
    assert location.startswith("/login?") and "alice" not in location


def test_a_head_request_issues_nothing_and_spends_nothing(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True)
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    flow.login()
    query = urlencode({"client_id": client_id, "request_uri": request_uri})
    assert flow.client.head("/oauth/authorize?" + query).status_code == 405
    assert "code" in query_of(_by_reference(flow, client_id, request_uri).headers["Location"])


def test_a_keyed_client_pushes_with_an_assertion_for_the_push_endpoint(
    flow: Flow, app: Flask
) -> None:
    from joserfc import jwt
    from joserfc.jwk import ECKey

    from tokenserver.clients import ClientSpec, register_client

    key = ECKey.generate_key("P-256", auto_kid=True)
    with app.app_context():
        made, _ = register_client(
            ClientSpec(
                "Keyed", redirect_uris=(REDIRECT,), jwks={"keys": [key.as_dict(private=False)]}
            )
        )
    issuer = app.extensions["tokenserver.settings"].issuer
    _verifier, challenge = pkce()
    for aud, status in ((f"{issuer}/oauth/par", 201), (f"{issuer}/oauth/introspect", 401)):
        now = int(time.time())
        claims = {"iss": made.client_id, "sub": made.client_id, "aud": aud, "iat": now}
        claims |= {"exp": now + 60, "jti": secrets.token_urlsafe(16)}
        assertion = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)
        body = authorization_request(made.client_id, challenge) | {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        assert flow.client.post("/oauth/par", data=body).status_code == status


def test_a_client_registered_pushed_only_takes_no_other_request(flow: Flow, app: Flask) -> None:
    from tokenserver.clients import ClientSpec, register_client

    with app.app_context():
        made, secret = register_client(
            ClientSpec("Bank", redirect_uris=(REDIRECT,), first_party=True, pushed_only=True)
        )
    client_id = made.client_id
    verifier, challenge = pkce()
    flow.login()
    # Built by anyone, however valid: a page, never a redirect, whatever it asks.
    direct = flow.authorize(client_id, challenge)
    assert direct.status_code == 400 and "Location" not in direct.headers
    assert "starts its sign-ins itself" in direct.text
    assert flow.authorize(client_id, challenge, prompt="none").status_code == 400
    request_uri = _pushed(flow, client_id, secret, challenge)
    code = query_of(_by_reference(flow, client_id, request_uri).headers["Location"])["code"]
    assert flow.exchange(client_id, secret, code, verifier).status_code == 200


def test_registration_sets_and_clears_pushed_only(
    client: FlaskClient, runner: FlaskCliRunner
) -> None:
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    metadata = {"client_name": "Bank", "redirect_uris": [REDIRECT]}
    registered = client.post(
        "/oauth/register",
        json={**metadata, "require_pushed_authorization_requests": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert registered.status_code == 201, registered.json
    assert registered.json["require_pushed_authorization_requests"] is True
    manage = {"Authorization": f"Bearer {registered.json['registration_access_token']}"}
    path = urlsplit(registered.json["registration_client_uri"]).path
    update = {**metadata, "client_id": registered.json["client_id"]}
    cleared = client.put(path, json=update, headers=manage)  # RFC 7592 §2.2: omitted is false
    assert (
        cleared.status_code == 200
        and cleared.json["require_pushed_authorization_requests"] is False
    )


def test_a_pushed_request_for_a_redirect_uri_the_client_dropped_gets_a_page(
    flow: Flow, runner: FlaskCliRunner
) -> None:
    token = runner.invoke(args=["clients", "registration-token"]).stdout.strip()
    metadata = {"client_name": "Bank", "redirect_uris": [REDIRECT, OTHER_REDIRECT]}
    registered = flow.client.post(
        "/oauth/register", json=metadata, headers={"Authorization": f"Bearer {token}"}
    ).json
    client_id, secret = registered["client_id"], registered["client_secret"]
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge)
    manage = {"Authorization": f"Bearer {registered['registration_access_token']}"}
    update = {**metadata, "client_id": client_id, "redirect_uris": [OTHER_REDIRECT]}
    path = urlsplit(registered["registration_client_uri"]).path
    assert flow.client.put(path, json=update, headers=manage).status_code == 200
    flow.login()
    # The URI was checked when pushed, and is checked again now: never a redirect to it.
    response = _by_reference(flow, client_id, request_uri)
    assert response.status_code == 400 and "Location" not in response.headers


def test_a_pushed_max_age_leaves_the_user_time_to_consent(flow: Flow, frozen: Any) -> None:
    client_id, secret = flow.register()  # not first-party: /consent asks
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, max_age="0")
    to_login = _by_reference(flow, client_id, request_uri)
    back = parse_qs(urlsplit(to_login.headers["Location"]).query)["next"][0]
    flow.login(next=back)
    to_consent = flow.client.get(back).headers["Location"]
    assert to_consent.startswith("/consent?")
    page = flow.client.get(to_consent)
    frozen.shift(90)  # reading the question
    answered = flow.client.post(
        to_consent, data={"csrf_token": csrf_of(page.text), "decision": "allow"}
    )
    assert "code" in query_of(answered.headers["Location"])


def test_a_head_request_at_consent_answers_nothing(flow: Flow) -> None:
    client_id, secret = flow.register()
    _verifier, challenge = pkce()
    request_uri = _pushed(flow, client_id, secret, challenge, prompt="none")
    flow.login()
    query = urlencode({"client_id": client_id, "request_uri": request_uri})
    assert flow.client.head("/consent?" + query).status_code == 405
    assert _by_reference(flow, client_id, request_uri).status_code == 302  # not spent


def test_a_double_click_on_allow_for_a_pushed_request_signs_the_app_in(flow: Flow) -> None:
    # The browser shows the answer to the last click: an error page there would leave the user
    # signed in nowhere while the app was sent a code the browser abandoned.
    asked = _asked(flow)
    first, second = (_answer(flow, asked.to_consent, asked.csrf) for _ in range(2))
    assert first.status_code == second.status_code == 303
    codes = [query_of(answered.headers["Location"])["code"] for answered in (first, second)]
    assert codes[0] != codes[1]
    assert query_of(second.headers["Location"])["state"] == "st-1"
    exchanged = flow.exchange(asked.client_id, asked.secret, codes[1], asked.verifier)
    assert exchanged.status_code == 200, exchanged.json


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_a_pushed_request_answered_in_one_browser_is_refused_to_any_other(
    flow: Flow, actions: Any, user: str
) -> None:
    actions.user("bob")
    asked = _asked(flow)
    other = _elsewhere(flow)
    other.login(user)
    other_csrf = csrf_of(other.client.get(asked.to_consent).text)  # open there, not answered
    assert "code" in query_of(_answer(flow, asked.to_consent, asked.csrf).headers["Location"])
    for refused in (
        _answer(other, asked.to_consent, other_csrf),
        other.client.get(asked.to_consent),
        _by_reference(other, asked.client_id, asked.request_uri),
        _by_reference(_elsewhere(flow), asked.client_id, asked.request_uri),  # no one signed in
    ):
        assert refused.status_code == 400 and "Location" not in refused.headers
        assert "expired or has been used" in refused.text
    # Refused elsewhere, it is still the answering browser's to answer again.
    assert "code" in query_of(_answer(flow, asked.to_consent, asked.csrf).headers["Location"])


def test_a_pushed_request_answered_again_still_expires(flow: Flow, frozen: Any) -> None:
    asked = _asked(flow)
    assert "code" in query_of(_answer(flow, asked.to_consent, asked.csrf).headers["Location"])
    frozen.shift(LIFETIME - 1)
    assert "code" in query_of(_answer(flow, asked.to_consent, asked.csrf).headers["Location"])
    frozen.shift(2)
    for expired in (
        _answer(flow, asked.to_consent, asked.csrf),
        _by_reference(flow, asked.client_id, asked.request_uri),
    ):
        assert expired.status_code == 400 and "Location" not in expired.headers
        assert "expired or has been used" in expired.text


def test_a_deny_sent_twice_tells_the_app_access_denied_twice(flow: Flow) -> None:
    asked = _asked(flow)
    for _ in range(2):
        denied = _answer(flow, asked.to_consent, asked.csrf, decision="deny")
        assert denied.status_code == 303
        query = query_of(denied.headers["Location"])
        assert query["error"] == "access_denied" and query["state"] == "st-1"
    assert _by_reference(_elsewhere(flow), asked.client_id, asked.request_uri).status_code == 400


@pytest.mark.parametrize("first, then", [("deny", "allow"), ("allow", "deny")])
def test_a_pushed_request_is_answered_again_only_as_it_was_first(
    flow: Flow, first: str, then: str
) -> None:
    # Deny, Back, Allow: the app was told access_denied for this request and its state; a code
    # for the same request now would contradict it (and the other way round).
    asked = _asked(flow)
    assert _answer(flow, asked.to_consent, asked.csrf, decision=first).status_code == 303
    changed = _answer(flow, asked.to_consent, asked.csrf, decision=then)
    assert changed.status_code == 400 and "Location" not in changed.headers
    assert "expired or has been used" in changed.text
    again = _answer(flow, asked.to_consent, asked.csrf, decision=first)  # still as it was
    assert again.status_code == 303
    assert ("code" if first == "allow" else "error") in query_of(again.headers["Location"])
