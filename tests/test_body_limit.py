"""Request bodies over the limit are refused with 413 whether sent with a length or chunked."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from typing import Any

import requests
from flask.testing import FlaskClient

from .conftest import PASSWORD, Actions

LIMIT = 64 * 1024


def _chunked(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """The body as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_form_over_the_limit_is_413_not_cut_short_and_processed(
    live_server: Any, actions: Actions
) -> None:
    actions.user("alice")
    backend = actions.oauth_client("backend")
    # The narrowing scope sits past the limit: a truncated body would get the full scope.
    padding = "x" * (LIMIT + 5000)
    body = f"grant_type=password&username=alice&password={PASSWORD.replace(' ', '+')}"
    body += f"&pad={padding}&scope=junk:read"
    response = requests.post(
        f"{live_server.url}/oauth/token",
        data=_chunked(body.encode()),
        auth=backend.auth,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "request_too_large"


ROUTES = [
    ("/users", "application/json"),
    ("/junk", "application/json"),
    ("/oauth/introspect", "application/x-www-form-urlencoded"),
    ("/oauth/revoke", "application/x-www-form-urlencoded"),
]


def test_chunked_bodies_over_the_limit_are_413_on_every_route(
    live_server: Any, actions: Actions
) -> None:
    access_token = actions.login("alice")["access_token"]
    for path, content_type in ROUTES:
        response = requests.post(
            f"{live_server.url}{path}",
            data=_chunked(b"a" * (LIMIT + 1)),
            headers={"Content-Type": content_type, **Actions.bearer(access_token)},
            timeout=10,
        )
        assert response.status_code == 413, (path, response.text)
        assert response.json()["error"] == "request_too_large"


def test_a_body_cut_short_by_its_client_is_refused_not_processed(
    live_server: Any, actions: Actions
) -> None:
    actions.user("alice")
    backend = actions.oauth_client("backend")
    # The client promised more than it sent, then closed its side: the narrowing scope it was
    # sending never arrived, and "scope=" alone would read as every scope the client may have.
    body = f"grant_type=password&username=alice&password={PASSWORD.replace(' ', '+')}&scope="
    basic = base64.b64encode(":".join(backend.auth).encode()).decode()
    head = (
        "POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Basic {basic}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body) + len('junk:read')}\r\n\r\n"
    )
    host, port = live_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body.encode())
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"access_token" not in answer
    assert b"Content-Length gave" in answer and b'"invalid_request"' in answer, answer


def test_a_chunked_body_within_the_limit_is_served(live_server: Any) -> None:
    body = b'{"username": "bob", "password": "' + PASSWORD.encode() + b'"}'
    response = requests.post(
        f"{live_server.url}/users",
        data=_chunked(body, 7),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_a_connection_gunicorn_will_close_after_an_unread_body_says_so(
    live_server: Any, actions: Actions
) -> None:
    # gunicorn drains at most 64 KiB of a body the app left unread, then closes the
    # connection; announced as kept alive, the client's next request on it would fail.
    access_token = actions.login("alice")["access_token"]
    item = b'{"name": "lamp"}'
    refused = [
        (item + b" " * LIMIT, False, "413"),  # over the limit: never read
        (item + b" " * 4 * LIMIT, True, "413"),  # chunked: read up to the limit only
        (item + b" " * (LIMIT - len(item)), False, "401"),  # at the limit, but refused unread
    ]
    for body, chunked, status in refused:
        with requests.Session() as session:
            headers = {"Content-Type": "application/json", **Actions.bearer(access_token)}
            if status == "401":
                headers["Authorization"] = "Bearer not-a-token"
            response = session.post(
                f"{live_server.url}/junk",
                data=_chunked(body) if chunked else body,
                headers=headers,
                timeout=10,
            )
            assert str(response.status_code) == status, response.text
            assert response.headers["Connection"] == "close"
            again = session.post(
                f"{live_server.url}/junk",
                data=item,
                headers={"Content-Type": "application/json", **Actions.bearer(access_token)},
                timeout=10,
            )
            assert again.status_code == 201, again.text


def test_a_connection_stays_open_after_a_body_read_or_drained(
    live_server: Any, actions: Actions
) -> None:
    access_token = actions.login("alice")["access_token"]
    headers = {"Content-Type": "application/json", **Actions.bearer(access_token)}
    item = b'{"name": "lamp"}'
    with requests.Session() as session:
        for body, content_type in [
            (item + b" " * (LIMIT - len(item)), "application/json"),  # read: 201
            (item, "text/plain"),  # unread but small: gunicorn drains it (415)
        ]:
            response = session.post(
                f"{live_server.url}/junk",
                data=body,
                headers={**headers, "Content-Type": content_type},
                timeout=10,
            )
            assert response.status_code in (201, 415), response.text
            assert response.headers["Connection"] == "keep-alive"


def test_a_body_over_the_limit_is_413_where_the_route_would_not_read_it(
    client: FlaskClient, actions: Actions
) -> None:
    # Flask refuses a body when it is read: a DELETE ignores its body, and must not act on it.
    bearer = Actions.bearer(actions.login("alice")["access_token"])
    item = client.post("/junk", json={"name": "lamp"}, headers=bearer).json
    too_large = b" " * (LIMIT + 1)
    deleted = client.delete(f"/junk/{item['id']}", data=too_large, headers=bearer)
    assert deleted.status_code == 413
    assert deleted.json["error"] == "request_too_large"
    assert client.get(f"/junk/{item['id']}", headers=bearer).status_code == 200
    assert client.get("/healthz", data=too_large).status_code == 413
    # At the limit, the body is still no reason to refuse.
    at_limit = client.delete(f"/junk/{item['id']}", data=b" " * LIMIT, headers=bearer)
    assert at_limit.status_code == 204
