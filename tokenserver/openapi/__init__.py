"""GET /openapi.json: the OpenAPI 3.1 description of every route, built from the code's limits."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..config import current_settings
from . import browser, components, paths, registration
from .schemas import SCHEMAS

bp = Blueprint("openapi", __name__)


def build_document(issuer: str) -> dict[str, Any]:
    """The whole document, for a server whose public base URL is `issuer`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tokenserver",
            "version": "1.0.0",
            "summary": "A standalone OAuth2 token server, with each user's own data under /junk.",
            "description": "Every error, on every route, is JSON: "
            '{"error": "<code>", "error_description": "<human text>"}. '
            "Browser apps (CORS): pages on the origin of a registered redirect URI may call "
            "/oauth/token, /oauth/par, /oauth/revoke, /oauth/userinfo, /users/me and /junk; any "
            "page may read the discovery documents, the resource metadata and the JWKS; a "
            "request or preflight from another origin to those routes is 403 forbidden.",
        },
        "servers": [{"url": issuer}],
        "tags": [{"name": name} for name in ("users", "oauth", "pages", "junk", "operations")],
        "paths": all_paths(),
        "components": {
            "schemas": {**SCHEMAS, **registration.schemas()},
            "responses": components.responses(),
            "headers": components.headers(),
            "parameters": components.parameters(),
            "securitySchemes": {
                **components.security_schemes(),
                **registration.security_schemes(),
            },
        },
    }


def all_paths() -> dict[str, Any]:
    """Every route, grouped as the API contract groups them."""
    return {
        **paths.users(),
        **paths.oauth(),
        **registration.paths(),
        **browser.paths(),
        **paths.junk(),
        **paths.operations(),
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """This document, with the configured issuer as its server (built once per app)."""
    document = current_app.extensions.get("tokenserver.openapi")
    if document is None:
        document = build_document(current_settings().issuer)
        current_app.extensions["tokenserver.openapi"] = document
    return jsonify(document)
