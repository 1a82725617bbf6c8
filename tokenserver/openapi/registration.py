"""The OpenAPI operations and schemas of dynamic client registration (RFC 7591 / RFC 7592)."""

from __future__ import annotations

from typing import Any

from ..models import GRANT_TYPES
from ..oauth.client_metadata import AUTH_METHODS
from .components import ERRORS, json_response, ref

Doc = dict[str, Any]

_NO_STORE = {"Cache-Control": "NoStore"}
_COMMON = ("Unauthorized", "TooManyRequests", "Unavailable")
_URIS: Doc = {"type": "array", "items": {"type": "string", "format": "uri"}}
_GRANTS: Doc = {"type": "array", "items": {"enum": list(GRANT_TYPES)}}
_JWKS: Doc = {"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array"}}}


def _metadata_properties() -> Doc:
    return {
        "client_name": {"type": "string", "maxLength": 200},
        "redirect_uris": {
            **_URIS,
            "description": (
                "https, or http on a loopback address (RFC 8252); no fragment, no user name or "
                "password (user@host). They are also the URIs /oauth/logout may return to "
                "(post_logout_redirect_uri); post_logout_redirect_uris is not read."
            ),
        },
        "grant_types": {
            **_GRANTS,
            "description": "Default: authorization_code. The password grant is refused (RFC "
            "9700), and so is token exchange (its audiences are set by an administrator); "
            "client_credentials needs a confidential client.",
        },
        "response_types": {"type": "array", "items": {"const": "code"}},
        "token_endpoint_auth_method": {"enum": list(AUTH_METHODS)},
        "scope": {"type": "string"},
        "jwks": _JWKS,
        "jwks_uri": {"type": "string", "format": "uri"},
        "dpop_bound_access_tokens": {
            "type": "boolean",
            "description": "RFC 9449 §5.2, default false: when true, every token request of "
            "the client must carry a DPoP proof, else 400 invalid_dpop_proof.",
        },
        "require_pushed_authorization_requests": {
            "type": "boolean",
            "description": "RFC 9126 §6, default false: when true, /oauth/authorize takes only "
            "requests the client pushed to /oauth/par first (others get an error page).",
        },
    }


def schemas() -> Doc:
    """ClientMetadata (what a client asks for) and ClientInformation (what it got)."""
    information = {
        **_metadata_properties(),
        "client_id": {"type": "string"},
        "client_id_issued_at": {"type": "integer"},
        "client_secret": {
            "type": "string",
            "description": "Only in the response that issued it, never again.",
        },
        "client_secret_expires_at": {"const": 0},
        "registration_access_token": {"type": "string"},
        "registration_client_uri": {"type": "string", "format": "uri"},
    }
    return {
        "ClientMetadata": {
            "type": "object",
            "description": "RFC 7591 §2 client metadata; fields not listed are ignored. An "
            "update (RFC 7592 §2.2) also sends client_id, and may send client_secret.",
            "properties": {
                **_metadata_properties(),
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
            },
        },
        "ClientInformation": {
            "type": "object",
            "required": [
                "client_id",
                "client_id_issued_at",
                "client_name",
                "redirect_uris",
                "grant_types",
                "response_types",
                "token_endpoint_auth_method",
                "scope",
                "dpop_bound_access_tokens",
                "require_pushed_authorization_requests",
                "registration_access_token",
                "registration_client_uri",
            ],
            "properties": information,
            "additionalProperties": False,
        },
    }


def _op(op_id: str, summary: str, ok: dict[int, Doc], errors: tuple[str, ...], **extra: Any) -> Doc:
    responses = {str(status): response for status, response in ok.items()}
    # A body over the limit is refused on every route, read or not (security.py).
    for name in sorted({*errors, "TooLarge"}, key=lambda name: ERRORS[name][0]):
        responses.setdefault(str(ERRORS[name][0]), ref("responses", name))
    return {
        "operationId": op_id,
        "summary": summary,
        "tags": ["oauth"],
        **extra,
        "responses": responses,
    }


def _body() -> Doc:
    return {
        "required": True,
        "content": {"application/json": {"schema": ref("schemas", "ClientMetadata")}},
    }


_BAD_METADATA = json_response(
    "Error",
    "invalid_client_metadata or invalid_redirect_uri, naming the field; for an update also "
    "invalid_request (client_id missing or not this client's, a wrong client_secret, or a "
    "field the server sets).",
)


def paths() -> Doc:
    """POST /oauth/register and GET|PUT|DELETE /oauth/register/{client_id}."""
    information = json_response("ClientInformation", "The client as registered", _NO_STORE)
    client_id = {"name": "client_id", "in": "path", "required": True, "schema": {"type": "string"}}
    management: list[Doc] = [{"registrationAccessToken": []}]
    return {
        "/oauth/register": {
            "post": _op(
                "registerClient",
                "Register a client (RFC 7591) with an initial access token",
                {
                    201: {**information, "description": "The new client, its secret shown once"},
                    400: _BAD_METADATA,
                },
                ("TooLarge", *_COMMON),
                security=[{"initialAccessToken": []}],
                requestBody=_body(),
            )
        },
        "/oauth/register/{client_id}": {
            "parameters": [client_id],
            "get": _op(
                "readClient",
                "Read a registration (RFC 7592)",
                {200: information},
                _COMMON,
                security=management,
            ),
            "put": _op(
                "updateClient",
                "Replace a registration's metadata (RFC 7592); the token stays the same",
                {200: information, 400: _BAD_METADATA},
                ("TooLarge", *_COMMON),
                security=management,
                requestBody=_body(),
            ),
            "delete": _op(
                "deleteClient",
                "Delete a registration, and every token of the client (RFC 7592)",
                {204: {"description": "Deleted"}},
                _COMMON,
                security=management,
            ),
        },
    }


def security_schemes() -> Doc:
    """The two bearer tokens of registration."""
    return {
        "initialAccessToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "From `tokenserver clients registration-token`: registers one client.",
        },
        "registrationAccessToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "From the registration response: manages that client, and only it.",
        },
    }
