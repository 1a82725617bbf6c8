"""CORS: pages on the origins of registered redirect URIs read what browser apps call; public
documents are readable from anywhere; nothing else is, and no credentials ever are."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tokenserver import cors
from tokenserver.browser_models import PushedAuthorization
from tokenserver.extensions import db
from tokenserver.keys import current_keyring
from tokenserver.models import LoginThrottle, TokenRecord

from .conftest import PASSWORD, Actions
from .helpers import REDIRECT, Flow, authorization_request, pkce

ORIGIN = "https://app.example.com"  # REDIRECT's origin
EVIL = "https://evil.example"
ALLOW_ORIGIN = "Access-Control-Allow-Origin"


def _preflight(client: FlaskClient, path: str, origin: str, method: str = "POST") -> Any:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, dpop",
    }
    return client.options(path, headers=headers)


def _no_cors(response: Any) -> None:
    assert not [name for name, _ in response.headers.items() if name.startswith("Access-Control")]


@pytest.fixture
def registered(flow: Flow) -> str:
    """A public browser app whose redirect URI is on ORIGIN; its client id."""
    client_id, _ = flow.register(REDIRECT, public=True)
    return client_id


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/oauth/token", "POST"),
        ("/oauth/par", "POST"),
        ("/oauth/revoke", "POST"),
        ("/oauth/userinfo", "GET, POST"),
        ("/users/me", "GET"),
        ("/junk", "GET, POST"),
        ("/junk/7", "GET, PATCH, DELETE"),
    ],
)
def test_a_registered_origin_is_answered_its_preflight(
    client: FlaskClient, registered: str, path: str, methods: str
) -> None:
    response = _preflight(client, path, ORIGIN)
    assert response.status_code == 204
    assert response.headers[ALLOW_ORIGIN] == ORIGIN
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == set(
        methods.split(", ")
    )
    allowed = response.headers["Access-Control-Allow-Headers"].lower().split(", ")
    assert {"authorization", "content-type", "dpop"} <= set(allowed)
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize(
    "origin",
    [
        EVIL,
        "null",  # sandboxed frames and file: pages
        ORIGIN + "/",
        ORIGIN + "/callback",
        "HTTPS://APP.EXAMPLE.COM",  # browsers send it in lower case: not one of theirs
        "http://app.example.com",  # the registered scheme only
        "https://app.example.com:8443",
        "https://app.example.com.evil.example",
        "https://evil.example#https://app.example.com",
        "https://app.example.com:99999",
        "https://" + "a" * 5000 + ".example",
        "",
    ],
)
def test_any_other_origin_is_refused(client: FlaskClient, registered: str, origin: str) -> None:
    refused = _preflight(client, "/oauth/token", origin)
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"
    _no_cors(refused)
    assert "Origin" in refused.headers["Vary"]  # the answer depends on it: caches must know
    # A request that needs no preflight (a form post) is refused just the same, before any work.
    sent = client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": registered},
        headers={"Origin": origin},
    )
    assert sent.status_code == 403 and sent.json["error"] == "forbidden"
    _no_cors(sent)
    assert "Origin" in sent.headers["Vary"]


def test_a_page_on_another_origin_cannot_make_the_token_endpoint_check_passwords(
    flow: Flow, actions: Actions, registered: str
) -> None:
    # A form post needs no preflight: without a refusal, any page its visitors open could make
    # their browsers guess passwords (from their IPs, past the per-IP limits, counting toward
    # the account's guard) or sign in, at a server the page's author cannot even reach.
    app_client = actions.oauth_client("Cli", public=True, grants=("password", "refresh_token"))
    guess = {"grant_type": "password", "username": "alice", "client_id": app_client.client_id}
    for password in ("wrong-password", PASSWORD):
        sent = actions.client.post(
            "/oauth/token", data={**guess, "password": password}, headers={"Origin": EVIL}
        )
        assert sent.status_code == 403 and sent.json["error"] == "forbidden"
    with flow.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LoginThrottle)) == 0
        assert db.session.scalar(select(func.count()).select_from(TokenRecord)) == 0
    # The same guess from a server (no Origin) is checked and counted, as ever.
    counted = actions.client.post("/oauth/token", data={**guess, "password": "wrong-password"})
    assert counted.status_code == 400 and counted.json["error"] == "invalid_grant"
    with flow.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LoginThrottle)) == 1


def test_a_page_on_another_origin_cannot_push_a_request(
    flow: Flow, client: FlaskClient, registered: str
) -> None:
    _verifier, challenge = pkce()
    body = authorization_request(registered, challenge)
    refused = client.post("/oauth/par", data=body, headers={"Origin": EVIL})
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"
    with flow.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(PushedAuthorization)) == 0
    pushed = client.post("/oauth/par", data=body, headers={"Origin": ORIGIN})
    assert pushed.status_code == 201 and pushed.headers[ALLOW_ORIGIN] == ORIGIN


def test_a_page_reads_the_token_response_and_its_errors(
    flow: Flow, client: FlaskClient, registered: str
) -> None:
    flow.login()
    verifier, challenge = pkce()
    code = flow.code_for(registered, challenge, scope="openid junk:write")
    exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    data = {**exchange, "code_verifier": verifier, "client_id": registered}
    issued = client.post("/oauth/token", data=data, headers={"Origin": ORIGIN})
    assert issued.status_code == 200 and issued.json["access_token"]
    assert issued.headers[ALLOW_ORIGIN] == ORIGIN
    assert "Origin" in issued.headers["Vary"] and issued.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Credentials" not in issued.headers
    bearer = {"Authorization": f"Bearer {issued.json['access_token']}", "Origin": ORIGIN}
    created = client.post("/junk", json={"name": "from a page"}, headers=bearer)
    assert created.status_code == 201 and created.headers[ALLOW_ORIGIN] == ORIGIN
    exposed = {h.strip() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "WWW-Authenticate", "Retry-After", "DPoP-Nonce"} <= exposed
    again = client.post("/oauth/token", data=data, headers={"Origin": ORIGIN})
    assert again.status_code == 400 and again.headers[ALLOW_ORIGIN] == ORIGIN


def test_a_page_reads_why_its_token_was_refused(client: FlaskClient, registered: str) -> None:
    refused = client.get("/users/me", headers={"Origin": ORIGIN, "Authorization": "Bearer x"})
    assert refused.status_code == 401 and refused.headers[ALLOW_ORIGIN] == ORIGIN
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/oauth/token", "GET"),  # a simple request: the browser sends it without a preflight
        ("/oauth/revoke", "GET"),
        ("/users/me", "POST"),
        ("/junk/7", "POST"),
    ],
)
def test_a_page_reads_that_a_route_does_not_take_its_method(
    client: FlaskClient, registered: str, path: str, method: str
) -> None:
    refused = client.open(path, method=method, headers={"Origin": ORIGIN})
    assert refused.status_code == 405 and refused.json["error"] == "method_not_allowed"
    assert refused.headers[ALLOW_ORIGIN] == ORIGIN and "Origin" in refused.headers["Vary"]
    # Another origin's page is refused before the method is even looked at, as elsewhere.
    elsewhere = client.open(path, method=method, headers={"Origin": EVIL})
    assert elsewhere.status_code == 403 and ALLOW_ORIGIN not in elsewhere.headers
    assert "Origin" in elsewhere.headers["Vary"]


def test_a_page_reads_that_a_public_document_takes_only_get(client: FlaskClient) -> None:
    refused = client.post("/.well-known/jwks.json", headers={"Origin": EVIL})
    assert refused.status_code == 405 and refused.headers[ALLOW_ORIGIN] == "*"


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
def test_public_documents_are_readable_from_any_page(client: FlaskClient, path: str) -> None:
    for headers in ({}, {"Origin": EVIL}, {"Origin": "null"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 200 and response.headers[ALLOW_ORIGIN] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_the_key_set_is_readable_from_any_page(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        current_keyring().signing_key()
    response = client.get("/.well-known/jwks.json", headers={"Origin": EVIL})
    assert response.status_code == 200 and response.headers[ALLOW_ORIGIN] == "*"
    preflight = _preflight(client, "/.well-known/jwks.json", EVIL, "GET")
    assert preflight.status_code == 204 and preflight.headers[ALLOW_ORIGIN] == "*"


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ],
)
def test_an_mcp_client_in_a_page_may_send_its_protocol_version_to_discovery(
    client: FlaskClient, path: str
) -> None:
    # The MCP TypeScript SDK sends MCP-Protocol-Version with each discovery request: refused at
    # the preflight, it costs a failed request and a retry without it on every discovery.
    headers = {
        "Origin": EVIL,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "mcp-protocol-version",
    }
    preflight = client.options(path, headers=headers)
    assert preflight.status_code == 204 and preflight.headers[ALLOW_ORIGIN] == "*"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower().split(", ")
    assert "mcp-protocol-version" in allowed
    # Not on a browser app's routes, which take no such header.
    app_route = _preflight(client, "/oauth/token", EVIL)
    assert (
        "mcp-protocol-version"
        not in app_route.headers.get("Access-Control-Allow-Headers", "").lower()
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/oauth/introspect", "POST"),  # resource servers, from their servers
        ("/oauth/register", "POST"),
        ("/oauth/device_authorization", "POST"),
        ("/users", "POST"),
        ("/login", "POST"),
        ("/oauth/authorize", "GET"),
        ("/account", "GET"),
        ("/metrics", "GET"),
    ],
)
def test_routes_no_page_calls_answer_no_origin(
    client: FlaskClient, registered: str, path: str, method: str
) -> None:
    preflight = _preflight(client, path, ORIGIN, method)
    assert preflight.status_code in (204, 404)  # the plain OPTIONS answer, or no route
    _no_cors(preflight)
    _no_cors(client.open(path, method=method, headers={"Origin": ORIGIN}))


@pytest.mark.parametrize(
    ("registered_uri", "origin", "allowed"),
    [
        ("http://127.0.0.1/callback", "http://127.0.0.1:5173", True),  # RFC 8252 §7.3: any port
        ("http://127.0.0.1:8080/callback", "http://127.0.0.1:5173", True),
        ("http://127.0.0.1/callback", "http://127.0.0.1", True),
        ("http://[::1]/callback", "http://[::1]:5173", True),
        ("http://127.0.0.1/callback", "http://localhost:5173", False),
        ("http://127.0.0.1/callback", "https://127.0.0.1:5173", False),
        ("http://localhost:3000/callback", "http://localhost:3000", True),
        ("http://localhost:3000/callback", "http://localhost:3001", False),  # exact off IPs
        ("https://app.example.com:443/callback", "https://app.example.com", True),
        ("https://app.example.com:8443/callback", "https://app.example.com:8443", True),
        ("https://bücher.example/callback", "https://xn--bcher-kva.example", True),
        ("https://straße.example/callback", "https://xn--strae-oqa.example", True),  # UTS #46
        ("https://straße.example/callback", "https://strasse.example", False),
        ("com.example.app:/callback", "null", False),  # a native app has no web origin
    ],
)
def test_the_origin_of_each_registered_uri(
    flow: Flow, client: FlaskClient, registered_uri: str, origin: str, allowed: bool
) -> None:
    flow.register(registered_uri, public=True)
    response = _preflight(client, "/oauth/token", origin)
    assert response.status_code == (204 if allowed else 403)
    assert response.headers.get(ALLOW_ORIGIN) == (origin if allowed else None)


def test_a_new_or_deleted_client_changes_the_origins_at_once(
    flow: Flow, client: FlaskClient, app: Flask
) -> None:
    from tokenserver.clients import delete_client

    assert _preflight(client, "/oauth/token", ORIGIN).status_code == 403
    client_id, _ = flow.register(REDIRECT, public=True)
    assert _preflight(client, "/oauth/token", ORIGIN).status_code == 204
    with app.app_context():
        delete_client(client_id)
    assert _preflight(client, "/oauth/token", ORIGIN).status_code == 403


def test_preflights_do_not_count_against_the_limits(make_app: Any) -> None:
    app = make_app(
        ratelimit_enabled=True, ratelimit_default="3/minute", ratelimit_token_failures="2/minute"
    )
    Flow(app, app.test_client()).register(REDIRECT, public=True)
    client = app.test_client()
    for _ in range(10):
        assert _preflight(client, "/oauth/token", ORIGIN).status_code == 204
        assert _preflight(client, "/.well-known/jwks.json", EVIL, "GET").status_code == 204
    failed = {"grant_type": "authorization_code", "code": "x", "client_id": "nobody"}
    for _ in range(2):
        assert client.post("/oauth/token", data=failed).status_code == 401
    throttled = client.post("/oauth/token", data=failed, headers={"Origin": ORIGIN})
    # The page reads that it is throttled, and for how long.
    assert throttled.status_code == 429 and throttled.headers[ALLOW_ORIGIN] == ORIGIN
    assert "Retry-After" in throttled.headers["Access-Control-Expose-Headers"]


def test_an_app_route_without_an_origin_gets_no_cors_headers_but_varies_by_origin(
    actions: Actions,
) -> None:
    session = actions.login()
    response = actions.client.get("/junk", headers=actions.bearer(session["access_token"]))
    assert response.status_code == 200
    _no_cors(response)
    # The Fetch standard (§3.2.5): a response that would carry CORS headers for some Origin
    # says Vary: Origin even when sent none, or a cache would serve it to a page later.
    assert "Origin" in response.headers["Vary"]


def test_every_endpoint_named_for_cors_exists(app: Flask) -> None:
    # A name that matches no route would leave that route without CORS, silently.
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints >= cors._APP | cors._PUBLIC
