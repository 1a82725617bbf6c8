"""Redirect URIs: registration rules, exact and loopback matching, local `next` paths, the CLI."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient, FlaskCliRunner

from tokenserver.redirects import local_path, redirect_uri_matches, redirect_uri_problem

from .conftest import PASSWORD, Actions
from .helpers import Flow


@pytest.mark.parametrize(
    "registered, requested, matches",
    [
        ("https://app.example.com/cb", "https://app.example.com/cb", True),
        ("https://app.example.com/cb", "https://app.example.com/cb/", False),
        ("https://app.example.com/cb", "https://APP.example.com/cb", False),
        ("https://app.example.com/cb", "https://app.example.com:443/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:50000/cb", True),
        ("http://127.0.0.1:1234/cb", "http://127.0.0.1:50000/cb", True),
        ("http://[::1]/cb", "http://[::1]:50000/cb", True),
        ("http://127.0.0.1/cb", "http://127.0.0.1:x/cb", False),
        ("http://127.0.0.1/cb", "http://user@127.0.0.1:5/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:5@evil.example/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1@evil.example/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:5\\@evil.example/cb", False),
        ("http://[::1]/cb", "http://[::1]:5@evil.example/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:65536/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:5/cb?", False),
        ("http://127.0.0.1/cb", "HTTP://127.0.0.1:5/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.2:5/cb", False),
        ("http://127.0.0.1/cb", "http://localhost:5/cb", False),
        ("http://localhost/cb", "http://localhost:5/cb", False),  # RFC 8252 §8.3: IPs only
        ("com.example.app:/cb", "com.example.app:/cb", True),
    ],
)
def test_redirect_uri_matching(registered: str, requested: str, matches: bool) -> None:
    assert redirect_uri_matches(registered, requested) is matches


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/relative",
        "https://app.example.com/cb#frag",
        "http://app.example.com/cb",
        "https:///cb",
        "javascript:alert(1)",
        "https://app.example.com/a b",
        "https://app.example.com\\@evil.example/cb",
        "https://app.example.com@evil.example/cb",  # user info: the host is evil.example
        "https://user:secret@app.example.com/cb",
        "https://@app.example.com/cb",
        "com.example.app://user@callback/",
    ],
)
def test_unsafe_redirect_uris_cannot_be_registered(uri: str, runner: FlaskCliRunner) -> None:
    assert redirect_uri_problem(uri) is not None
    result = runner.invoke(args=["clients", "create", "x", "--redirect-uri", uri or " "])
    assert result.exit_code != 0 and "redirect URI" in result.output


@pytest.mark.parametrize(
    "uri", ["https://app.example.com/cb", "http://127.0.0.1/cb", "com.example.app:/oauth"]
)
def test_safe_redirect_uris_can_be_registered(uri: str) -> None:
    assert redirect_uri_problem(uri) is None


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/account", "/account"),
        ("/oauth/authorize?a=1", "/oauth/authorize?a=1"),
        ("//evil.example", "/account"),
        ("https://evil.example", "/account"),
        ("/\\evil.example", "/account"),
        ("/\tevil", "/account"),
        (None, "/account"),
    ],
)
def test_local_path_never_leaves_the_site(target: str | None, expected: str) -> None:
    assert local_path(target) == expected


def test_clients_create_with_redirect_uris_gets_the_browser_grants(
    runner: FlaskCliRunner,
) -> None:
    result = runner.invoke(
        args=[
            "clients",
            "create",
            "web",
            "--redirect-uri",
            "https://app.example.com/cb",
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--first-party",
            "--json",
        ]
    )
    made = json.loads(result.output)
    assert made["grant_types"] == ["authorization_code", "refresh_token"]
    assert made["redirect_uris"] == ["https://app.example.com/cb", "http://127.0.0.1/cb"]
    assert made["first_party"] is True and "openid" in made["scope"].split()
    plain = json.loads(runner.invoke(args=["clients", "create", "api", "--json"]).output)
    assert plain["grant_types"] == ["password", "refresh_token"] and plain["redirect_uris"] == []
    bare = runner.invoke(args=["clients", "create", "x", "--grant", "authorization_code"])
    assert bare.exit_code != 0 and "needs at least one redirect URI" in bare.output


def test_make_runs_demo_url_signs_in_and_its_curl_line_exchanges_the_code(
    client: FlaskClient, runner: FlaskCliRunner, actions: Actions, app: Any
) -> None:
    actions.user("alice")
    printed = runner.invoke(args=["clients", "ensure-demo"]).output
    secret = re.search(r"demo client_secret: (\S+)", printed).group(1)  # type: ignore[union-attr]
    url = re.search(r"(http://localhost:8000/oauth/authorize\?\S+)", printed).group(1)  # type: ignore[union-attr]
    flow = Flow(app, client)
    flow.login()
    asked = client.get(url[len("http://localhost:8000") :])
    allowed = flow.consent(asked.headers["Location"])
    code = parse_qs(urlsplit(allowed.headers["Location"]).query)["code"][0]
    curl = dict(re.findall(r"-d (\w+)=(\S+)", printed))
    client_id = re.search(r"-u '([^:]+):", printed).group(1)  # type: ignore[union-attr]
    response = client.post("/oauth/token", data={**curl, "code": code}, auth=(client_id, secret))
    assert response.status_code == 200 and "id_token" in response.json
    again = runner.invoke(args=["clients", "ensure-demo"]).output
    assert "client_secret:" not in again and "/oauth/authorize?" in again
    assert PASSWORD not in printed
