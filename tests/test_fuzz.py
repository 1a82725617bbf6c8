"""Schemathesis against live gunicorn: every documented operation, with a valid token and without.

Generated requests, valid and invalid, must never get a 5xx, a response the OpenAPI document
does not allow, or an error that is not our JSON shape. `make test` runs a bounded number of
examples per operation and mode; `make fuzz` raises it with FUZZ_EXAMPLES.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tokenserver import create_app
from tokenserver.config import Settings
from tokenserver.extensions import db

from .conftest import PASSWORD, LiveServer, clean_database

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
_METHODS = ("get", "put", "post", "delete", "patch")


def _document() -> dict[str, Any]:
    """The OpenAPI document the service builds (empty if this build has none)."""
    try:
        from tokenserver.openapi import build_document
    except ImportError:
        return {"paths": {}}
    document: dict[str, Any] = build_document(Settings().issuer)
    return document


def _cases() -> list[Any]:
    """(METHOD, path, mode) for every operation; invalid input only where there is input."""
    cases = []
    for path, item in _document()["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            cases.append(pytest.param(method.upper(), path, GenerationMode.POSITIVE))
            if "parameters" in operation or "parameters" in item or "requestBody" in operation:
                cases.append(pytest.param(method.upper(), path, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def fuzz_target(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Live gunicorn, its published OpenAPI document, and a user's token with every scope."""
    server = LiveServer(base_settings, 2, Path(tmp_path_factory.mktemp("fuzz"))).start()
    app = create_app(base_settings)
    try:
        document = requests.get(f"{server.url}/openapi.json", timeout=10)
        if document.status_code == 404:
            pytest.skip("this build serves no /openapi.json")
        yield {
            "url": server.url,
            "schema": schemathesis.openapi.from_url(f"{server.url}/openapi.json"),
            "bearer": _user_token(app, server.url),
        }
    finally:
        server.stop()
        with app.app_context():
            db.engine.dispose()
        clean_database(base_settings.database_url)


def _user_token(app: Any, url: str) -> str:
    from tokenserver.clients import ClientSpec, register_client

    signup = {"username": "fuzzer", "password": PASSWORD}
    assert requests.post(f"{url}/users", json=signup, timeout=10).status_code == 201
    with app.app_context():
        made, secret = register_client(ClientSpec("fuzz", grants=("password",), introspect=True))
        auth = (made.client_id, secret)
    login = {"grant_type": "password", **signup}
    response = requests.post(f"{url}/oauth/token", data=login, auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _pages() -> set[str]:
    """The paths of our HTML pages, which answer errors as pages (README "Browser sign-in")."""
    return {
        path
        for path, item in _document()["paths"].items()
        if any("pages" in op.get("tags", []) for m, op in item.items() if m in _METHODS)
    }


PAGES = _pages()


def error_is_our_json(ctx: Any, response: Any, case: Any) -> bool:
    """Every 4xx/5xx is {"error", "error_description"} as JSON, never HTML or bare text.

    Our HTML pages answer HTML, errors included; content_type_conformance holds them to it.
    """
    if response.status_code < 400 or case.path in PAGES:
        return True
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered as {content_type!r}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert isinstance(body.get("error_description"), str), body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    error_is_our_json,
]


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "valid-token"])
@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_generated_requests_get_documented_answers(
    fuzz_target: dict[str, Any], method: str, path: str, token: bool, mode: GenerationMode
) -> None:
    operation = fuzz_target["schema"][path][method]
    headers = {"Authorization": f"Bearer {fuzz_target['bearer']}"} if token else {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=EXAMPLES <= 10,  # the bounded run in `make test` is the same every time
        database=None,
    )
    def call(case: Any) -> None:
        sent = {**(case.headers or {}), **headers}
        case.call_and_validate(base_url=fuzz_target["url"], headers=sent, checks=CHECKS, timeout=30)

    call()


def test_the_fuzz_token_is_valid(fuzz_target: dict[str, Any]) -> None:
    """The token the runs above send is a live one, so they reach past authentication."""
    response = requests.get(
        f"{fuzz_target['url']}/users/me",
        headers={"Authorization": f"Bearer {fuzz_target['bearer']}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["username"] == "fuzzer"


def test_every_published_operation_is_fuzzed(fuzz_target: dict[str, Any]) -> None:
    """The operations parametrised above are exactly those the live server publishes."""
    published = requests.get(f"{fuzz_target['url']}/openapi.json", timeout=10).json()
    assert published["paths"].keys() == _document()["paths"].keys()
    for path, item in published["paths"].items():
        for method in item:
            if method in _METHODS:
                assert fuzz_target["schema"][path][method.upper()] is not None
