"""Every error is JSON: Werkzeug's own 404/405/413, and unexpected 500s without internals."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from .conftest import raw_answer
from .helpers import REQUESTS, sample


def _assert_json_error(response, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.json["error"] == error
    assert isinstance(response.json["error_description"], str)


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    _assert_json_error(client.get("/no/such/route"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/healthz")
    _assert_json_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/junk", {"GET", "HEAD", "POST"}),
        ("/oauth/token", {"POST"}),
        ("/login", {"GET", "HEAD", "POST"}),
    ],
)
def test_options_answers_204_with_allow_and_no_content(
    client: FlaskClient, path: str, methods: set[str]
) -> None:
    response = client.open(path, method="OPTIONS")
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == methods | {"OPTIONS"}
    assert "Content-Type" not in response.headers and response.data == b""


def test_oversized_body_is_json_413(client: FlaskClient) -> None:
    response = client.post("/users", data=b"x" * (64 * 1024 + 1), content_type="application/json")
    _assert_json_error(response, 413, "request_too_large")


def test_unexpected_error_is_json_500_with_request_id(app: Flask, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "req-123"})
    _assert_json_error(response, 500, "server_error")
    assert "secret internals" not in response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] == "req-123"


def test_an_exhausted_connection_pool_is_json_503(app: Flask) -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    @app.get("/busy")
    def busy() -> None:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    response = app.test_client().get("/busy")
    _assert_json_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "1"
    assert "QueuePool" not in response.get_data(as_text=True)


def test_request_id_is_made_when_absent_or_unsafe(client: FlaskClient) -> None:
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    unsafe = client.get("/healthz", headers={"X-Request-ID": 'bad"id<script>'})
    assert unsafe.headers["X-Request-ID"] != 'bad"id<script>'


def _token_errors(client: FlaskClient, auth: tuple[str, str]) -> list[Any]:
    def post(**data: str) -> Any:
        return client.post("/oauth/token", data=data, auth=auth)

    return [
        post(grant_type="password", password="x"),  # no username
        post(grant_type="password", username="alice"),  # no password
        post(grant_type="refresh_token"),  # no refresh_token
        post(grant_type="urn:example:made-up"),
        post(grant_type="password", username="a", password="b", scope="admin"),
        client.post("/oauth/token", data={"grant_type": "password"}),  # no client at all
    ]


def test_oauth_errors_speak_with_one_voice(actions: Any) -> None:
    oauth_client = actions.oauth_client(grants=("client_credentials",))
    responses = _token_errors(actions.client, oauth_client.auth)
    for response in responses:
        description = response.json["error_description"]
        assert "Missing" not in description and "methods" not in description, description
        assert "urn:example" not in description  # nothing submitted is echoed
        assert "grant_type=" not in description


def test_missing_parameters_are_named_in_our_words(actions: Any) -> None:
    oauth_client = actions.oauth_client()
    responses = _token_errors(actions.client, oauth_client.auth)
    assert [r.json["error_description"] for r in responses[:3]] == [
        "'username' is required",
        "'password' is required",
        "'refresh_token' is required",
    ]


def test_json_sent_as_a_form_is_refused_without_echoing_it(client: FlaskClient) -> None:
    body = '{"username": "alice", "password": "my very secret phrase"}'
    response = client.post("/users", data=body, content_type="application/x-www-form-urlencoded")
    _assert_json_error(response, 400, "invalid_request")
    assert "secret" not in response.json["error_description"]
    assert "alice" not in response.json["error_description"]


def test_a_repeated_known_form_parameter_is_refused_by_name(actions: Any) -> None:
    oauth_client = actions.oauth_client()
    response = actions.client.post(
        "/oauth/token",
        data="grant_type=client_credentials&scope=junk:read&scope=junk:write",
        content_type="application/x-www-form-urlencoded",
        auth=oauth_client.auth,
    )
    _assert_json_error(response, 400, "invalid_request")
    assert "'scope'" in response.json["error_description"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/oauth/token", "grant_type=client_credentials"),
        ("/oauth/introspect", "token=not-a-token"),
        ("/oauth/revoke", "token=not-a-token"),
    ],
)
def test_a_repeated_unknown_form_parameter_is_ignored(actions: Any, path: str, body: str) -> None:
    # RFC 6749 §3.2: unrecognized parameters are ignored, however often they come.
    oauth_client = actions.oauth_client(introspect=True)
    response = actions.client.post(
        path,
        data=f"{body}&x_trace=1&x_trace=2",
        content_type="application/x-www-form-urlencoded",
        auth=oauth_client.auth,
    )
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(("wait", "words"), [(1, "1 second."), (2, "2 seconds.")])
def test_waits_are_said_in_good_grammar(wait: int, words: str) -> None:
    from tokenserver.guard import Throttled

    assert str(Throttled(wait)).endswith(f"retry after {words}")


def test_a_database_outage_logs_one_line_per_request_and_few_tracebacks(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    client = app.test_client()
    caplog.set_level("WARNING")
    for n in range(50):
        response = client.get("/.well-known/jwks.json", headers={"X-Request-ID": f"req-{n}"})
        _assert_json_error(response, 503, "service_unavailable")
    lines = [r for r in caplog.records if r.name == "tokenserver.errors"]
    assert len(lines) == 50
    assert all(r.levelname == "ERROR" for r in lines)  # an outage still trips error alerts
    assert sum(1 for r in lines if r.exc_info) <= 1  # the cause on record, once a minute
    for n, record in enumerate(lines):
        message = record.getMessage()
        assert "\n" not in message and len(message) < 400
        assert "OperationalError" in message and "/.well-known/jwks.json" in message
        assert f"req-{n}" in message


MALFORMED = [
    (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
        "invalid_request",
    ),
    (b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    (
        b"POST /junk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        "invalid_request",
    ),
    (b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
    (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: nothing-you-know\r\n\r\n",
        417,
        "expectation_failed",
    ),
]


def test_requests_gunicorn_refuses_are_answered_in_json(live_server: Any) -> None:
    # Refused before the app sees them, but every error of the service is JSON, never HTML.
    for request, status, code in MALFORMED:
        answered, headers, body = raw_answer(live_server.url, request)
        assert answered == status, body
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        error = json.loads(body)
        assert set(error) == {"error", "error_description"}
        assert error["error"] == code
        assert b"nothing-you-know" not in body and b"qqq" not in body  # nothing echoed
    # Counted, though no route saw them: a flood of malformed requests shows in the metrics.
    text = requests.get(f"{live_server.url}/metrics", timeout=10).text
    counted = {
        status: sum(
            sample(text, REQUESTS, method=method, route="<server>", status=str(status))
            for method in ("GET", "POST", "other")
        )
        for _request, status, _code in MALFORMED
    }
    assert counted == Counter(status for _request, status, _code in MALFORMED)
