"""Reusable parts of the OpenAPI document: error responses, headers, parameters, security."""

from __future__ import annotations

from typing import Any

from ..cursors import MAX_ID
from ..junk import PAGE_DEFAULT, PAGE_MAX
from ..models import GRANT_TYPES, SCOPES

Doc = dict[str, Any]

# Every error shares the one {"error", "error_description"} body. Each operation lists the ones
# it can give, so a status a route was not meant to answer fails response validation.
ERRORS: dict[str, tuple[int, str]] = {
    "BadRequest": (400, "The request breaks a rule; the description names the field."),
    "Unauthorized": (401, "No valid bearer token (RFC 6750): invalid_token, or no token at all."),
    "InsufficientScope": (403, "The token lacks the scope (RFC 6750 insufficient_scope)."),
    "Forbidden": (403, "The server refuses the action, whoever asks."),
    "CrossOrigin": (
        403,
        "forbidden: sent by a page whose origin is not that of any client's registered "
        "redirect URI (CORS); nothing was done.",
    ),
    "NotFound": (404, "Nothing here for this caller."),
    "Conflict": (409, "The request collides with existing state."),
    "TooLarge": (413, "The body is larger than the configured maximum (64 KiB by default)."),
    "UnsupportedMediaType": (415, "The body is not in an accepted media type."),
    "TooManyRequests": (429, "Throttled; try again after Retry-After seconds."),
    "Unavailable": (503, "The database is unavailable; try again shortly."),
}
_ERROR_HEADERS: dict[str, dict[str, str]] = {
    "Unauthorized": {"WWW-Authenticate": "BearerChallenge", "DPoP-Nonce": "DPoPNonce"},
    "InsufficientScope": {"WWW-Authenticate": "BearerChallenge"},
    "TooManyRequests": {"Retry-After": "RetryAfter"},
    "Unavailable": {"Retry-After": "RetryAfter"},
}


def ref(kind: str, name: str) -> Doc:
    """A $ref to a component."""
    return {"$ref": f"#/components/{kind}/{name}"}


def json_response(schema: str, description: str, headers: dict[str, str] | None = None) -> Doc:
    """A response with a JSON body of a named schema and named header components."""
    response: Doc = {
        "description": description,
        "content": {"application/json": {"schema": ref("schemas", schema)}},
    }
    if headers:
        response["headers"] = {name: ref("headers", header) for name, header in headers.items()}
    return response


def with_dpop_nonce(operation: Doc) -> Doc:
    """An operation that takes DPoP proofs: its own responses may carry DPoP-Nonce."""
    for response in operation["responses"].values():
        if "$ref" not in response:
            response.setdefault("headers", {})["DPoP-Nonce"] = ref("headers", "DPoPNonce")
    return operation


def responses() -> Doc:
    """The shared error responses, by name."""
    return {
        name: json_response("Error", description, _ERROR_HEADERS.get(name))
        for name, (_status, description) in ERRORS.items()
    }


def _header(description: str, schema: Doc, required: bool = False) -> Doc:
    return {"description": description, "required": required, "schema": schema}


def headers() -> Doc:
    """The response headers the document names."""
    text = {"type": "string"}
    return {
        "Location": _header("Where the new resource lives", text, True),
        "BearerChallenge": _header(
            "The RFC 6750 Bearer challenge, or the RFC 9449 DPoP one (with `algs`) for DPoP "
            "tokens (error invalid_dpop_proof or use_dpop_nonce for a refused proof); without "
            "any token, both",
            text,
            True,
        ),
        "BasicChallenge": _header("A Basic challenge for client authentication", text),
        "RetryAfter": _header("Seconds to wait before trying again", {"type": "integer"}),
        "DPoPNonce": _header(
            "RFC 9449 §8-9, with TOKENSERVER_DPOP_NONCE on: the nonce the next DPoP proof must "
            "carry, in every answer to a request whose proof was checked (and with each "
            "use_dpop_nonce refusal)",
            text,
        ),
        "NoStore": _header(
            "Responses with credentials or user data are never cached", {"const": "no-store"}, True
        ),
    }


def parameters() -> Doc:
    """The path and query parameters of the junk routes."""
    return {
        "DPoP": {
            "name": "DPoP",
            "in": "header",
            "required": False,
            "description": "An RFC 9449 proof: a JWS (typ dpop+jwt) signed by the client's key, "
            "with htm, htu, iat, a fresh jti and, at resources, ath. Required with "
            "`Authorization: DPoP`, and on every token request of a client registered with "
            "dpop_bound_access_tokens. With TOKENSERVER_DPOP_NONCE on, its nonce claim must be "
            "one the server sent in DPoP-Nonce (RFC 9449 §8-9).",
            "schema": {"type": "string"},
        },
        "ItemId": {
            "name": "item_id",
            "in": "path",
            "required": True,
            "description": "ASCII decimal digits without a leading zero; any other spelling "
            "of a number (01, Unicode digits) is a 404.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        },
        "Limit": {
            "name": "limit",
            "in": "query",
            "description": "Items per page.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": PAGE_MAX,
                "default": PAGE_DEFAULT,
            },
        },
        "Cursor": {
            "name": "cursor",
            "in": "query",
            "description": "The next_cursor of the previous page, passed back unchanged.",
            "schema": {"type": "string"},
        },
    }


def security_schemes() -> Doc:
    """Bearer tokens for users' routes, Basic for OAuth clients."""
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An RFC 9068 access token from /oauth/token. Scopes: "
            + ", ".join(SCOPES)
            + "; an operation's requirement lists the scope it needs.",
        },
        "dpopAuth": {
            "type": "http",
            "scheme": "dpop",
            "description": "RFC 9449: `Authorization: DPoP <token>` for a token issued with a "
            "DPoP proof (token_type DPoP), plus a fresh proof in the DPoP header. Such a token "
            "is refused as Bearer.",
        },
        "basicAuth": {
            "type": "http",
            "scheme": "basic",
            "description": "OAuth client authentication (client_secret_basic); the OAuth "
            "endpoints also take client_secret_post and private_key_jwt (client_assertion, "
            "RFC 7523), and public clients send only client_id. "
            "Grants: " + ", ".join(GRANT_TYPES) + ".",
        },
    }
