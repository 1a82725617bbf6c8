"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, that responses must obey."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from .conftest import ROOT

# Every route of the API contract, as (method, path).
CONTRACT = {
    ("post", "/users"),
    ("get", "/users/me"),
    ("post", "/users/me/password"),
    ("post", "/oauth/token"),
    ("post", "/oauth/introspect"),
    ("post", "/introspect"),
    ("post", "/oauth/revoke"),
    ("get", "/.well-known/oauth-authorization-server"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/junk"),
    ("post", "/junk"),
    ("get", "/junk/{item_id}"),
    ("patch", "/junk/{item_id}"),
    ("delete", "/junk/{item_id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/oauth/authorize"),
    ("post", "/oauth/authorize"),
    ("get", "/login"),
    ("post", "/login"),
    ("get", "/consent"),
    ("post", "/consent"),
    ("get", "/account"),
    ("get", "/oauth/userinfo"),
    ("post", "/oauth/userinfo"),
    ("get", "/oauth/logout"),
    ("post", "/oauth/logout"),
    ("get", "/.well-known/openid-configuration"),
    ("post", "/oauth/device_authorization"),
    ("get", "/device"),
    ("post", "/device"),
}
_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.json  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in _METHODS
    }


def _served(app: Flask) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, in OpenAPI's {name} spelling."""
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    return served


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors = list(OpenAPIV31SpecValidator(document).iter_errors())
    assert errors == []


def test_broken_document_fails_validation(document: dict[str, Any]) -> None:
    broken = {key: value for key, value in document.items() if key != "info"}
    assert list(OpenAPIV31SpecValidator(broken).iter_errors()) != []


def test_every_route_of_the_contract_is_documented(document: dict[str, Any]) -> None:
    assert CONTRACT - _operations(document) == set()


def test_every_served_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    assert _served(app) - _operations(document) == set()


def test_every_documented_route_is_served(app: Flask, document: dict[str, Any]) -> None:
    assert _operations(document) - _served(app) == set()


def test_every_operation_documents_the_413_every_route_gives(document: dict[str, Any]) -> None:
    # A body over the limit is refused before any route runs, whether it reads a body or not.
    missing = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in _METHODS and "413" not in operation["responses"]
    ]
    assert missing == []


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [
        item[method]["operationId"]
        for item in document["paths"].values()
        for method in item
        if method in _METHODS
    ]
    assert len(ids) == len(set(ids))


def test_server_is_the_configured_issuer(make_app: Any) -> None:
    app = make_app(issuer="https://auth.example.com")
    document = app.test_client().get("/openapi.json").json
    assert document["servers"] == [{"url": "https://auth.example.com"}]


def test_security_schemes_are_bearer_and_basic(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["basicAuth"] == {**schemes["basicAuth"], "type": "http", "scheme": "basic"}


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("get", "/junk", "junk:read"),
        ("post", "/junk", "junk:write"),
        ("get", "/junk/{item_id}", "junk:read"),
        ("patch", "/junk/{item_id}", "junk:write"),
        ("delete", "/junk/{item_id}", "junk:write"),
    ],
)
def test_junk_operations_name_their_scope(
    document: dict[str, Any], method: str, path: str, scope: str
) -> None:
    operation = document["paths"][path][method]
    # A Bearer token, or a DPoP-bound one with its proof (RFC 9449).
    assert operation["security"] == [{"bearerAuth": [scope]}, {"dpopAuth": [scope]}]
    assert {"$ref": "#/components/parameters/DPoP"} in operation["parameters"]
    assert {"401", "403", "429", "503"} <= set(operation["responses"])


def test_every_error_response_uses_the_one_error_shape(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            if "pages" in operation["tags"]:
                continue  # HTML pages answer HTML, errors included (README "Browser sign-in")
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    resolved = _resolve(document, response)
                    schema = resolved["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = document["components"][kind][name]
    return node


def _schema(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for a component schema that refers to no other (OAS 3.1 is JSON Schema)."""
    return Draft202012Validator(document["components"]["schemas"][name])


def test_jwks_schema_forbids_private_key_members(document: dict[str, Any]) -> None:
    jwks = _schema(document, "JWKS")
    public = {"kty": "RSA", "kid": "k1", "n": "abc", "e": "AQAB", "alg": "RS256", "use": "sig"}
    assert jwks.is_valid({"keys": [public]})
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        assert not jwks.is_valid({"keys": [{**public, member: "secret"}]})


def test_inactive_introspection_must_be_exactly_active_false(document: dict[str, Any]) -> None:
    introspection = _schema(document, "Introspection")
    assert introspection.is_valid({"active": False})
    assert not introspection.is_valid({"active": False, "scope": "junk:read"})


def test_documented_page_limits_are_the_enforced_ones(
    document: dict[str, Any], actions: Any
) -> None:
    limit = document["components"]["parameters"]["Limit"]["schema"]
    headers = actions.bearer(actions.login("alice")["access_token"])
    for value, status in ((limit["maximum"], 200), (limit["maximum"] + 1, 400)):
        assert actions.client.get(f"/junk?limit={value}", headers=headers).status_code == status
    for value, status in ((limit["minimum"], 200), (limit["minimum"] - 1, 400)):
        assert actions.client.get(f"/junk?limit={value}", headers=headers).status_code == status


# --- the response check every test runs through the test client -----------------------------


def test_a_response_that_breaks_the_document_fails_the_test(app: Flask) -> None:
    @app.after_request
    def corrupt(response: Response) -> Response:
        response.set_data(b'{"status": "fine, thanks"}')
        return response

    with pytest.raises(AssertionError, match="OpenAPI document"):
        app.test_client().get("/healthz")


def test_an_undocumented_status_fails_the_test(app: Flask) -> None:
    @app.after_request
    def teapot(response: Response) -> Response:
        response.status_code = 418
        return response

    with pytest.raises(AssertionError, match="418"):
        app.test_client().get("/healthz")


def test_a_missing_required_header_fails_the_test(make_app: Any, actions: Any) -> None:
    headers = actions.bearer(actions.login("alice")["access_token"])
    app = make_app()

    @app.after_request
    def unlocated(response: Response) -> Response:
        response.headers.pop("Location", None)
        return response

    with pytest.raises(AssertionError, match="Location"):
        app.test_client().post("/junk", json={"name": "x"}, headers=headers)


def test_routes_outside_the_document_are_not_checked(client: FlaskClient) -> None:
    assert client.get("/no/such/route").status_code == 404
    assert client.delete("/healthz").status_code == 405


def test_the_api_reference_in_docs_is_rendered_from_the_document() -> None:
    from tokenserver.openapi import build_document
    from tokenserver.openapi.markdown import _ISSUER, render

    reference = (ROOT / "docs" / "api.md").read_text()
    assert reference == render(build_document(_ISSUER)), (
        "docs/api.md is stale: python -m tokenserver.openapi.markdown > docs/api.md"
    )
    for path in build_document(_ISSUER)["paths"]:
        assert f" {path}`" in reference


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/oauth/token", "post", "200"),
        ("/oauth/token", "post", "400"),
        ("/oauth/par", "post", "201"),
        ("/oauth/par", "post", "400"),
        ("/junk", "get", "200"),
        ("/junk", "post", "201"),
        ("/users/me", "get", "200"),
        ("/oauth/userinfo", "get", "200"),
    ],
)
def test_answers_to_dpop_requests_document_the_nonce_header(
    document: dict[str, Any], path: str, method: str, status: str
) -> None:
    response = document["paths"][path][method]["responses"][status]
    assert response["headers"]["DPoP-Nonce"] == {"$ref": "#/components/headers/DPoPNonce"}
    unauthorized = document["components"]["responses"]["Unauthorized"]
    assert "DPoP-Nonce" in unauthorized["headers"]
    assert "use_dpop_nonce" in document["components"]["headers"]["DPoPNonce"]["description"]
