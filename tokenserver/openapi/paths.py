"""The operations of the OpenAPI document, one per route the service answers."""

from __future__ import annotations

from typing import Any

from .components import ERRORS, json_response, ref, with_dpop_nonce

Doc = dict[str, Any]

_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_COMMON = ("TooManyRequests", "Unavailable")
# Every bearer route: RFC 6750 §3.1's invalid_request (two access tokens at once, say), its
# invalid_token and insufficient_scope.
BEARER_ERRORS = ("BadRequest", "Unauthorized", "InsufficientScope", *_COMMON)
_BODY = ("BadRequest", "TooLarge", "UnsupportedMediaType")
_NO_AUTH: list[Doc] = [{}]
# {} as an alternative: client_secret_post, private_key_jwt (client_assertion), or a public
# client sending only its client_id.
_CLIENT_AUTH: list[Doc] = [{"basicAuth": []}, {}]
_NO_STORE = {"Cache-Control": "NoStore"}


def _op(
    op_id: str, summary: str, tag: str, ok: dict[int, Doc], errors: tuple[str, ...], **extra: Any
) -> Doc:
    """One operation: its own responses, then the shared error responses it can give."""
    responses = {str(status): response for status, response in ok.items()}
    # A body over the limit is refused on every route, read or not (security.py).
    for name in sorted({*errors, "TooLarge"}, key=lambda name: ERRORS[name][0]):
        responses.setdefault(str(ERRORS[name][0]), ref("responses", name))
    operation = {"operationId": op_id, "summary": summary, "tags": [tag], **extra}
    if any("dpopAuth" in requirement for requirement in extra.get("security", [])):
        # RFC 9449 §7: a DPoP-bound token comes with its proof.
        operation["parameters"] = [*extra.get("parameters", []), ref("parameters", "DPoP")]
        return with_dpop_nonce({**operation, "responses": responses})
    return {**operation, "responses": responses}


def _body(schema: str, *media: str) -> Doc:
    return {"required": True, "content": {m: {"schema": ref("schemas", schema)} for m in media}}


def bearer(scope: str | None = None) -> list[Doc]:
    """A resource route's security: a Bearer token, or a DPoP-bound one (RFC 9449)."""
    scopes = [scope] if scope else []
    return [{"bearerAuth": scopes}, {"dpopAuth": scopes}]


def _oauth_op(op_id: str, summary: str, ok: Doc, body: str, *errors: str) -> Doc:
    """An OAuth endpoint: form body, client authentication, RFC 6749 §5.2 errors."""
    return _op(
        op_id,
        summary,
        "oauth",
        {
            200: ok,
            400: json_response(
                "Error",
                "invalid_request, invalid_grant, invalid_scope, invalid_target, "
                "invalid_dpop_proof or use_dpop_nonce (RFC 9449), ...",
            ),
            401: json_response("Error", "invalid_client", {"WWW-Authenticate": "BasicChallenge"}),
        },
        ("TooLarge", "UnsupportedMediaType", *errors, *_COMMON),
        security=_CLIENT_AUTH,
        requestBody=_body(body, _FORM),
    )


def _introspect(op_id: str) -> Doc:
    ok = json_response("Introspection", "The token's state (RFC 7662)", _NO_STORE)
    return _oauth_op(op_id, "Introspect an access or refresh token", ok, "TokenParameters")


def _public_get(
    op_id: str, summary: str, tag: str, ok: dict[int, Doc], errors: tuple[str, ...]
) -> Doc:
    return {"get": _op(op_id, summary, tag, ok, errors, security=_NO_AUTH)}


def users() -> Doc:
    """POST /users, GET /users/me, POST /users/me/password."""
    return {
        "/users": {
            "post": _op(
                "createUser",
                "Sign up",
                "users",
                {201: json_response("User", "The new account", {"Location": "Location"})},
                (*_BODY, "Forbidden", "Conflict", *_COMMON),
                security=_NO_AUTH,
                requestBody=_body("Signup", _JSON, _FORM),
            )
        },
        "/users/me": {
            "get": _op(
                "getMe",
                "The account the bearer token belongs to",
                "users",
                {200: json_response("User", "The account", _NO_STORE)},
                BEARER_ERRORS,
                security=bearer(),
            )
        },
        "/users/me/password": {
            "post": _op(
                "changePassword",
                "Change the caller's password; every other login of theirs is signed out",
                "users",
                {
                    204: {"description": "Changed"},
                    400: json_response(
                        "Error",
                        "invalid_request naming the field (weak_password for a common new "
                        "password), or invalid_grant: the current password is wrong",
                    ),
                },
                (*_BODY, *BEARER_ERRORS),
                security=bearer(),
                requestBody=_body("PasswordChange", _JSON),
            )
        },
    }


def oauth() -> Doc:
    """The token, introspection and revocation endpoints and the .well-known documents."""
    token = _oauth_op(
        "token",
        "Issue tokens: password, refresh_token, client_credentials, authorization_code, "
        "token exchange (RFC 8693), device_code (RFC 8628: authorization_pending, "
        "slow_down, access_denied, expired_token while polling)",
        json_response("TokenResponse", "Tokens", _NO_STORE),
        "TokenRequest",
        "CrossOrigin",
    )
    # RFC 9449 §5: a proof binds the tokens issued to its key (token_type DPoP).
    token["parameters"] = [ref("parameters", "DPoP")]
    return {
        "/oauth/token": {"post": with_dpop_nonce(token)},
        "/oauth/device_authorization": {
            "post": _oauth_op(
                "deviceAuthorization",
                "Start a device sign-in (RFC 8628 §3.1): a device code to poll with, and a user "
                "code for the user to type at /device",
                json_response(
                    "DeviceAuthorization", "The codes and where the user goes", _NO_STORE
                ),
                "DeviceAuthorizationRequest",
            )
        },
        "/oauth/introspect": {"post": _introspect("introspect")},
        "/introspect": {"post": _introspect("introspectAlias")},
        "/oauth/revoke": {
            "post": _oauth_op(
                "revoke",
                "Revoke a token (RFC 7009); an unknown token also gets 200",
                json_response("Revoked", "Revoked, or never known"),
                "TokenParameters",
                "CrossOrigin",
            )
        },
        "/.well-known/oauth-authorization-server": _public_get(
            "metadata",
            "Authorization server metadata (RFC 8414)",
            "oauth",
            {200: json_response("ServerMetadata", "The metadata")},
            _COMMON,
        ),
        "/.well-known/oauth-protected-resource": _public_get(
            "protectedResource",
            "Metadata of the resource the bearer routes serve (RFC 9728), when "
            "TOKENSERVER_AUDIENCE is an http(s) URL without a path; every bearer challenge "
            "names its address",
            "oauth",
            {200: json_response("ProtectedResourceMetadata", "The metadata")},
            ("NotFound", *_COMMON),
        ),
        "/.well-known/oauth-protected-resource/{resource_path}": {
            "parameters": [
                {
                    "name": "resource_path",
                    "in": "path",
                    "required": True,
                    "description": "The path of TOKENSERVER_AUDIENCE (RFC 9728 §3.1)",
                    "schema": {"type": "string", "minLength": 1, "pattern": "^[^?#]+$"},
                }
            ],
            **_public_get(
                "protectedResourceAtPath",
                "The same, when TOKENSERVER_AUDIENCE has a path",
                "oauth",
                {200: json_response("ProtectedResourceMetadata", "The metadata")},
                ("NotFound", *_COMMON),
            ),
        },
        "/.well-known/jwks.json": _public_get(
            "jwks",
            "Public signing keys (RFC 7517): the next one (published before it signs), the "
            "current one, and retired ones still in use",
            "oauth",
            {200: json_response("JWKS", "The key set")},
            _COMMON,
        ),
    }


def junk() -> Doc:
    """The caller's own items."""
    item = json_response("JunkItem", "The item", _NO_STORE)
    return {
        "/junk": {
            "get": _op(
                "listJunk",
                "A page of the caller's items, oldest first",
                "junk",
                {200: json_response("JunkPage", "A page", _NO_STORE)},
                BEARER_ERRORS,
                security=bearer("junk:read"),
                parameters=[ref("parameters", "Limit"), ref("parameters", "Cursor")],
            ),
            "post": _op(
                "createJunk",
                "Store a new item",
                "junk",
                {
                    201: json_response(
                        "JunkItem", "The new item", {**_NO_STORE, "Location": "Location"}
                    )
                },
                (*_BODY, *BEARER_ERRORS),
                security=bearer("junk:write"),
                requestBody=_body("JunkCreate", _JSON),
            ),
        },
        "/junk/{item_id}": {
            "parameters": [ref("parameters", "ItemId")],
            "get": _op(
                "getJunk",
                "One of the caller's items",
                "junk",
                {200: item},
                ("NotFound", *BEARER_ERRORS),
                security=bearer("junk:read"),
            ),
            "patch": _op(
                "updateJunk",
                "Change the given fields of an item",
                "junk",
                {200: item},
                (*_BODY, "NotFound", *BEARER_ERRORS),
                security=bearer("junk:write"),
                requestBody=_body("JunkUpdate", _JSON),
            ),
            "delete": _op(
                "deleteJunk",
                "Delete an item",
                "junk",
                {204: {"description": "Deleted"}},
                ("NotFound", *BEARER_ERRORS),
                security=bearer("junk:write"),
            ),
        },
    }


def operations() -> Doc:
    """Health, readiness, metrics and this document."""
    metrics = {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "/healthz": _public_get(
            "healthz",
            "Liveness: the process serves (no database call)",
            "operations",
            {200: json_response("Health", "Serving")},
            (),
        ),
        "/readyz": _public_get(
            "readyz",
            "Readiness: the database answers and its schema is at head",
            "operations",
            {200: json_response("Ready", "Ready"), 503: json_response("NotReady", "Not ready")},
            ("TooManyRequests",),
        ),
        "/metrics": _public_get(
            "metrics",
            "Prometheus metrics of all workers",
            "operations",
            {200: metrics},
            (),
        ),
        "/openapi.json": _public_get(
            "openapi",
            "This document",
            "operations",
            {200: json_response("OpenAPIDocument", "The OpenAPI 3.1 document")},
            ("TooManyRequests",),
        ),
    }
