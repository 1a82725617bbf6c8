"""Client authentication: one method per request, malformed headers, one answer, audit, limits."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from .conftest import PASSWORD, Actions, RegisteredClient
from .helpers import assert_oauth_error

ENDPOINTS = ["/oauth/token", "/oauth/introspect", "/oauth/revoke"]
LOGIN = {"grant_type": "password", "username": "alice", "password": PASSWORD}


@pytest.fixture
def confidential(actions: Actions) -> RegisteredClient:
    actions.user("alice")
    return actions.oauth_client("backend")


@pytest.fixture
def public(actions: Actions) -> RegisteredClient:
    return actions.oauth_client("spa", public=True)


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_failing_basic_credentials_do_not_fall_through_to_a_public_client(
    client: FlaskClient, confidential: RegisteredClient, public: RegisteredClient
) -> None:
    data = {**LOGIN, "client_id": public.client_id}
    response = client.post("/oauth/token", data=data, auth=(confidential.client_id, "wrong"))
    assert_oauth_error(response, 401, "invalid_client")
    assert "access_token" not in response.json
    # The public client alone, presenting nothing that fails, still works.
    assert client.post("/oauth/token", data=data).status_code == 200


@pytest.mark.parametrize("scheme", ["Basic\t", "BASIC  ", "basic\t "])
def test_a_malformed_basic_header_does_not_fall_through_to_a_public_client(
    client: FlaskClient, confidential: RegisteredClient, public: RegisteredClient, scheme: str
) -> None:
    data = {**LOGIN, "client_id": public.client_id}
    wrong = base64.b64encode(f"{confidential.client_id}:wrong".encode()).decode()
    for header in (scheme.strip(), scheme + wrong):
        response = client.post("/oauth/token", data=data, headers={"Authorization": header})
        assert_oauth_error(response, 401, "invalid_client")


def test_the_basic_scheme_is_read_whatever_its_case_and_whitespace(
    client: FlaskClient, confidential: RegisteredClient
) -> None:
    raw = f"{confidential.client_id}:{confidential.secret}".encode()
    for scheme in ("basic ", "BASIC\t", "Basic  "):
        headers = {"Authorization": scheme + base64.b64encode(raw).decode()}
        assert client.post("/oauth/token", data=LOGIN, headers=headers).status_code == 200


def test_another_authorization_scheme_is_not_client_authentication(
    client: FlaskClient, confidential: RegisteredClient, public: RegisteredClient
) -> None:
    # Not a client credential: the public client the body names is the client, as before.
    data = {**LOGIN, "client_id": public.client_id}
    for header in ("Bearer abc", "Basicx abc"):
        response = client.post("/oauth/token", data=data, headers={"Authorization": header})
        assert response.status_code == 200, header


def test_a_wrong_posted_secret_does_not_fall_through_either(
    client: FlaskClient, confidential: RegisteredClient, public: RegisteredClient
) -> None:
    data = {**LOGIN, "client_id": public.client_id, "client_secret": "made-up"}
    assert_oauth_error(client.post("/oauth/token", data=data), 401, "invalid_client")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "header",
    [
        "Basic 6Trp",  # decodes to bytes that are not UTF-8
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic not base64 at all!",
        "Basic \xff\xfe",  # the header's own bytes past ASCII (read as Latin-1), not base64's
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic ",
    ],
)
def test_malformed_basic_header_is_invalid_client_never_a_500(
    client: FlaskClient, confidential: RegisteredClient, path: str, header: str
) -> None:
    data = {**LOGIN, "token": "x"} if path == "/oauth/token" else {"token": "x"}
    response = client.post(path, data=data, headers={"Authorization": header})
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unknown_client_and_wrong_secret_read_the_same(
    client: FlaskClient, confidential: RegisteredClient, path: str
) -> None:
    data = {**LOGIN, "token": "x"}
    unknown = client.post(path, data=data, auth=("no-such-client", "whatever"))
    wrong = client.post(path, data=data, auth=(confidential.client_id, "whatever"))
    posted = client.post(path, data={**data, "client_id": "nope", "client_secret": "x"})
    for response in (unknown, wrong, posted):
        assert_oauth_error(response, 401, "invalid_client")
    assert unknown.json == wrong.json == posted.json


def test_errors_speak_our_words_not_authlibs(
    client: FlaskClient, confidential: RegisteredClient
) -> None:
    responses = [
        client.post("/oauth/token", data=LOGIN),
        client.post("/oauth/introspect", data={"token": "x"}),
        client.post("/oauth/revoke", data={"token": "x", "client_id": "nobody"}),
    ]
    for response in responses:
        assert_oauth_error(response, 401, "invalid_client")
        description = response.json["error_description"]
        assert "methods" not in description and "[" not in description, description


def test_failed_client_authentication_is_audited(
    client: FlaskClient,
    confidential: RegisteredClient,
    events: Any,  # noqa: F811
) -> None:
    client.post("/oauth/token", data=LOGIN, auth=(confidential.client_id, "wrong"))
    client.post("/oauth/introspect", data={"token": "x"}, headers={"Authorization": "Basic 6Trp"})
    client.post("/oauth/revoke", data={"token": "x"}, auth=("my secret typed here", "x"))
    first, second, third = events("client.auth_failed")
    assert first["client_id"] == confidential.client_id
    assert first["method"] == "client_secret_basic"
    assert first["endpoint"] == "token"
    assert second["client_id"] is None and second["endpoint"] == "introspection"
    # A claimed id that names no client may be anything the caller typed: never logged.
    assert third["client_id"] is None
    assert "my secret typed here" not in str(third)


def test_failed_client_authentication_counts_toward_the_per_ip_limit(
    make_app: Any,
) -> None:
    app: Flask = make_app(ratelimit_enabled=True, ratelimit_token_failures="2/minute")
    actions = Actions(app, app.test_client())
    actions.user("alice")
    backend = actions.oauth_client("backend")
    spa = actions.oauth_client("spa", public=True)
    data = {**LOGIN, "client_id": spa.client_id}
    with time_machine.travel(datetime.now(UTC), tick=False):
        for _ in range(2):
            wrong = actions.client.post("/oauth/token", data=data, auth=(backend.client_id, "x"))
            assert wrong.status_code == 401
        refused = actions.client.post("/oauth/token", data=data)
    assert refused.status_code == 429


def test_a_refresh_token_from_the_wrong_client_is_audited(
    actions: Actions,
    confidential: RegisteredClient,
    events: Any,  # noqa: F811
) -> None:
    tokens = actions.token(confidential).json
    thief = actions.oauth_client("thief")
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    response = actions.client.post("/oauth/token", data=data, auth=thief.auth)
    assert_oauth_error(response, 400, "invalid_grant")
    [event] = events("token.wrong_client")
    assert event["client_id"] == thief.client_id
    assert event["owner_client_id"] == confidential.client_id
    assert event["family_id"]


ASSERTION = {
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": "eyJhbGciOiJub25lIn0.e30.",
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("second", ["client_secret", "client_assertion"])
def test_two_authentication_methods_at_once_are_invalid_request(
    client: FlaskClient, confidential: RegisteredClient, path: str, second: str, events: Any
) -> None:
    # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    # request"; §5.2 names the error. The Basic credentials are right, so only the second
    # method can be why the request is refused.
    extra = {"client_secret": confidential.secret} if second == "client_secret" else ASSERTION
    data = {**LOGIN, "token": "x", **extra}
    response = client.post(path, data=data, auth=confidential.auth)
    assert_oauth_error(response, 400, "invalid_request")
    assert "more than one" in response.json["error_description"]
    assert events("token.issued") == []


def test_a_posted_secret_with_an_assertion_is_invalid_request(
    client: FlaskClient, confidential: RegisteredClient
) -> None:
    data = {**LOGIN, **ASSERTION, "client_id": confidential.client_id}
    response = client.post("/oauth/token", data={**data, "client_secret": confidential.secret})
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_body_client_id_must_name_the_basic_client(
    client: FlaskClient, confidential: RegisteredClient, public: RegisteredClient, path: str
) -> None:
    data = {**LOGIN, "token": "x"}
    other = client.post(path, data={**data, "client_id": public.client_id}, auth=confidential.auth)
    assert_oauth_error(other, 400, "invalid_request")
    for same in (confidential.client_id, ""):  # RFC 6749 §3.2: an empty one is left out
        response = client.post(path, data={**data, "client_id": same}, auth=confidential.auth)
        assert response.status_code == 200, response.json


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_failed_basic_authentication_is_challenged_with_a_realm(
    client: FlaskClient, confidential: RegisteredClient, path: str
) -> None:
    # RFC 6749 §5.2: a 401 challenges in the scheme the client used; RFC 7617 §2: a Basic
    # challenge must carry a realm.
    data = {**LOGIN, "token": "x"}
    response = client.post(path, data=data, auth=(confidential.client_id, "wrong"))
    assert_oauth_error(response, 401, "invalid_client")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Basic realm="tokenserver", '), challenge
    assert 'error="invalid_client"' in challenge
