"""Security headers on every response, no caching of secrets, and input limits at every layer."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from tokenserver.keys import current_keyring

from .conftest import PASSWORD, Actions, raw_answer

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _assert_security_headers(response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/healthz", {}),
        ("get", "/readyz", {}),
        ("get", "/.well-known/jwks.json", {}),
        ("get", "/.well-known/oauth-authorization-server", {}),
        ("get", "/no/such/route", {}),
        ("delete", "/healthz", {}),
        ("post", "/users", {"data": b"x", "content_type": "text/plain"}),
        ("post", "/users", {"json": {"username": "alice", "password": PASSWORD}}),
        ("get", "/users/me", {}),
        ("post", "/oauth/token", {"data": {"grant_type": "password"}}),
        ("post", "/oauth/introspect", {"data": {"token": "x"}}),
        ("get", "/junk", {}),
    ],
)
def test_every_response_carries_the_security_headers(
    app: Flask, client: FlaskClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    with app.app_context():
        current_keyring().signing_key()  # so the JWKS has a key to publish
    _assert_security_headers(getattr(client, method)(path, **kwargs))


def test_unexpected_errors_carry_the_security_headers(app: Flask) -> None:
    @app.get("/__boom")
    def boom() -> None:
        raise RuntimeError("boom")

    response = app.test_client().get("/__boom")
    assert response.status_code == 500
    _assert_security_headers(response)


def test_rate_limited_answers_carry_the_security_headers(make_app: Any) -> None:
    client = make_app(ratelimit_enabled=True, ratelimit_default="1/minute").test_client()
    client.get("/.well-known/oauth-authorization-server")
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 429
    _assert_security_headers(response)


def test_token_and_user_data_are_never_cached(actions: Actions) -> None:
    tokens = actions.login("alice")
    bearer = actions.bearer(tokens["access_token"])
    oauth_client = tokens["client"]
    responses = [
        actions.token(oauth_client, "alice"),
        actions.token(oauth_client, "alice", password="wrong password here"),
        actions.client.get("/users/me", headers=bearer),
        actions.client.get("/users/me"),
        actions.client.post("/users", json={"username": "bob", "password": PASSWORD}),
        actions.client.post(
            "/oauth/introspect", data={"token": tokens["access_token"]}, auth=oauth_client.auth
        ),
        actions.client.post(
            "/introspect", data={"token": tokens["access_token"]}, auth=oauth_client.auth
        ),
        actions.client.post(
            "/oauth/revoke", data={"token": tokens["refresh_token"]}, auth=oauth_client.auth
        ),
        actions.client.get("/junk", headers=bearer),
        # Refusals of our own, before Authlib renders anything.
        actions.client.post("/oauth/token", json={"grant_type": "password"}),
        actions.client.post("/oauth/register", json={}),
    ]
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
        assert response.headers["Pragma"] == "no-cache", response.request.path


def test_public_documents_stay_cacheable(client: FlaskClient) -> None:
    for path in ("/.well-known/jwks.json", "/.well-known/oauth-authorization-server"):
        assert client.get(path).headers["Cache-Control"].startswith("public")


def test_hsts_only_when_clients_reach_us_over_https(make_app: Any) -> None:
    plain = make_app().test_client().get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers
    secure = make_app(issuer="https://auth.example.com").test_client().get("/healthz")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


def test_unknown_media_type_is_json_415_but_oauth_says_invalid_request(
    client: FlaskClient,
) -> None:
    signup = client.post("/users", data=b"<x/>", content_type="application/xml")
    assert signup.status_code == 415
    assert signup.json["error"] == "unsupported_media_type"
    # RFC 6749 §3.2: the token endpoint takes form parameters; anything else is invalid_request.
    token = client.post("/oauth/token", json={"grant_type": "password"})
    assert token.status_code == 400
    assert token.json["error"] == "invalid_request"


def test_a_multipart_sign_up_is_told_which_form_is_taken(client: FlaskClient) -> None:
    # multipart/form-data is a form too: the answer names the one media type of forms we read.
    signup = client.post(
        "/users", data={"username": "alice", "password": "x"}, content_type="multipart/form-data"
    )
    assert signup.status_code == 415
    assert "application/x-www-form-urlencoded" in signup.json["error_description"]


def test_oversized_login_fields_are_refused_cleanly(actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    for username, password in (("a" * 20_000, PASSWORD), ("alice", "p" * 60_000)):
        response = actions.token(oauth_client, username, password=password)
        assert response.status_code == 400
        assert response.json["error"] == "invalid_grant"


def test_deeply_nested_json_is_refused_before_parsing(client: FlaskClient) -> None:
    body = b'{"username": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = client.post("/users", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.json["error_description"]


def _raw_status(url: str, request: bytes) -> int:
    return raw_answer(url, request)[0]


def test_gunicorn_rejects_oversized_headers(live_server: Any) -> None:
    ok = requests.get(f"{live_server.url}/healthz", headers={"X-Pad": "a" * 8000}, timeout=10)
    assert ok.status_code == 200
    big_line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert _raw_status(live_server.url, big_line) in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(150))
    assert _raw_status(
        live_server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    ) in (
        400,
        431,
    )
    long_target = b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw_status(live_server.url, long_target) in (400, 414)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"username": "alice", "password": "correct horse\\u0000battery"}', "application/json"),
        (b'{"username": "alice", "password": "correct horse \\ud800 battery"}', "application/json"),
        (b"username=alice&password=correct+horse%00battery", "application/x-www-form-urlencoded"),
    ],
)
def test_text_no_database_stores_is_refused_naming_the_field(
    client: FlaskClient, data: bytes, content_type: str
) -> None:
    response = client.post("/users", data=data, content_type=content_type)
    assert response.status_code == 400
    assert "'password'" in response.json["error_description"]


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_a_client_id_with_a_nul_is_refused_not_a_500(client: FlaskClient, path: str) -> None:
    body = {"grant_type": "client_credentials", "token": "x", "client_id": "a\x00b"}
    response = client.post(path, data={**body, "client_secret": "s"})
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"
