"""/oauth/* and /.well-known/*: the token, introspection and revocation endpoints, metadata."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..config import JWKS_MAX_AGE, current_settings
from ..errors import InvalidRequest
from ..keys import current_keyring
from ..models import GRANT_TYPES, OIDC_SCOPES, SCOPES
from ..store import replay
from . import dpop
from .client_keys import ALGORITHMS
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .grants import PasswordGrant
from .oidc import browser_metadata
from .server import current_server

bp = Blueprint("oauth", __name__)
# Every parameter our OAuth endpoints read (RFC 6749, 7009, 7662).
_PARAMETERS = frozenset(
    {
        "grant_type",
        "username",
        "password",
        "scope",
        "refresh_token",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "token",
        "token_type_hint",
        "code",
        "redirect_uri",
        "code_verifier",
        "device_code",
        "resource",
        "audience",
    }
)

# RFC 8707 §2: `resource` may be given several times, one per resource server.
_REPEATABLE = frozenset({"resource"})


def _require_form() -> None:
    # RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1: parameters come form-encoded.
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    # RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once."
    repeated = next(
        (
            name
            for name, values in request.form.lists()
            if len(values) > 1 and name not in _REPEATABLE
        ),
        None,
    )
    if repeated is not None:
        # Named only if it is a parameter of ours: an error never echoes what was submitted.
        named = f"'{repeated}'" if repeated in _PARAMETERS else "a parameter"
        raise InvalidRequest(f"{named} must not be given more than once")


@bp.post("/oauth/token")
def token() -> Response:
    """Issue tokens for every grant the server registers (models.GRANT_TYPES)."""
    _require_form()
    if not request.form.get("grant_type"):
        raise InvalidRequest("'grant_type' is required")
    server = current_server()
    try:
        with replay.deferred():  # single-use JWT ids spent with the tokens, in one commit
            response: Response = server.create_token_response()
    except replay.Replayed as exc:
        return server.replayed_response(exc.kind)
    return response


@bp.post("/oauth/device_authorization")
def device_authorization() -> Response:
    """RFC 8628 §3.1: a device code, and a user code for the user to type at /device."""
    if request.mimetype or request.content_length:  # a Basic-authenticated client may send none
        _require_form()
    response: Response = current_server().create_endpoint_response("device_authorization")
    return response


@bp.post("/oauth/introspect")
@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection for authenticated clients."""
    _require_form()
    response: Response = current_server().create_endpoint_response("introspection")
    return response


@bp.post("/oauth/revoke")
def revoke() -> Response:
    """RFC 7009 token revocation."""
    _require_form()
    response: Response = current_server().create_endpoint_response("revocation")
    return response


@bp.post("/oauth/register")
def register() -> Response:
    """RFC 7591 dynamic client registration, with an initial access token."""
    response: Response = current_server().create_endpoint_response("client_registration")
    return response


@bp.route("/oauth/register/<client_id>", methods=["GET", "PUT", "DELETE"])
def configure(client_id: str) -> Response:
    """RFC 7592: read, replace or delete a registration, with its registration access token."""
    response: Response = current_server().create_endpoint_response("client_configuration")
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    """RFC 8414 authorization server metadata."""
    response = jsonify(server_metadata(current_settings().issuer))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def server_metadata(issuer: str) -> dict[str, Any]:
    """What RFC 8414 and OpenID Connect Discovery publish: the same endpoints in both."""
    grant_types = [
        name for name in GRANT_TYPES if name != "password" or current_settings().password_grant
    ]
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "registration_endpoint": f"{issuer}/oauth/register",
        "device_authorization_endpoint": f"{issuer}/oauth/device_authorization",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": grant_types,
        "token_endpoint_auth_methods_supported": PasswordGrant.TOKEN_ENDPOINT_AUTH_METHODS,
        # RFC 8414 §2: the algorithms private_key_jwt assertions may be signed with.
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": IntrospectionEndpoint.CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": RevocationEndpoint.CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": [*SCOPES, *OIDC_SCOPES],
        "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),  # RFC 9449 §5.1
        "service_documentation": f"{issuer}/openapi.json",
        **browser_metadata(issuer),
    }


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    """RFC 7517 public keys: the next one, the current one, and retired ones whose tokens live."""
    response = jsonify(current_keyring().jwks())
    # A new key is published this long plus our key cache before it signs (keys.py), so a
    # verifier that honours this max-age never meets a kid its cached set lacks.
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response
