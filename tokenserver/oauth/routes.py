"""/oauth/* and /.well-known/*: the token, introspection and revocation endpoints, metadata."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..config import JWKS_MAX_AGE, current_settings
from ..errors import InvalidRequest
from ..keys import current_keyring
from ..models import GRANT_TYPES, SCOPES
from . import current_server
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .grants import PasswordGrant

bp = Blueprint("oauth", __name__)


def _require_form() -> None:
    # RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1: parameters come form-encoded.
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    # RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once."
    repeated = next((name for name, values in request.form.lists() if len(values) > 1), None)
    if repeated:
        raise InvalidRequest(f"{repeated!r} must not be given more than once")


@bp.post("/oauth/token")
def token() -> Response:
    """Issue tokens for the password, refresh_token and client_credentials grants."""
    _require_form()
    if not request.form.get("grant_type"):
        raise InvalidRequest("'grant_type' is required")
    response: Response = current_server().create_token_response()
    return response


@bp.post("/oauth/introspect")
@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection for authenticated clients."""
    _require_form()
    response: Response = current_server().create_endpoint_response("introspection")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/oauth/revoke")
def revoke() -> Response:
    """RFC 7009 token revocation."""
    _require_form()
    response: Response = current_server().create_endpoint_response("revocation")
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    """RFC 8414 authorization server metadata."""
    issuer = current_settings().issuer
    response = jsonify(
        issuer=issuer,
        token_endpoint=f"{issuer}/oauth/token",
        introspection_endpoint=f"{issuer}/oauth/introspect",
        revocation_endpoint=f"{issuer}/oauth/revoke",
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        grant_types_supported=list(GRANT_TYPES),
        response_types_supported=[],  # no authorization endpoint: only token grants
        token_endpoint_auth_methods_supported=PasswordGrant.TOKEN_ENDPOINT_AUTH_METHODS,
        introspection_endpoint_auth_methods_supported=IntrospectionEndpoint.CLIENT_AUTH_METHODS,
        revocation_endpoint_auth_methods_supported=RevocationEndpoint.CLIENT_AUTH_METHODS,
        scopes_supported=list(SCOPES),
        service_documentation=f"{issuer}/openapi.json",
    )
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    """RFC 7517 public keys: the next one, the current one, and retired ones whose tokens live."""
    response = jsonify(current_keyring().jwks())
    # A new key is published this long plus our key cache before it signs (keys.py), so a
    # verifier that honours this max-age never meets a kid its cached set lacks.
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response
