"""The JSON Schemas of the OpenAPI document: every body the service reads or writes."""

from __future__ import annotations

from typing import Any

from ..cursors import MAX_ID
from ..junk import DESCRIPTION_MAX, NAME_MAX
from ..models import GRANT_TYPES, OIDC_SCOPES, SCOPES

Schema = dict[str, Any]


# private_key_jwt (RFC 7523 §2.2): a JWT signed with the client's registered key.
_CLIENT_ASSERTION: Schema = {
    "client_assertion": {
        "type": "string",
        "description": "private_key_jwt: a JWT signed by the client's key; iss and sub are the "
        "client_id, aud the issuer or the token endpoint, a single-use jti, exp at most "
        "5 minutes ahead",
    },
    "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
}


def _object(required: list[str], properties: Schema, *, closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


_STRING: Schema = {"type": "string"}
_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_SCOPE: Schema = {
    "type": "string",
    "description": "Space-separated scopes, of: " + ", ".join((*SCOPES, *OIDC_SCOPES)),
}
# RFC 8707 §2: repeatable; each an absolute URI without a fragment, registered for the client.
_RESOURCE: Schema = {
    "type": "array",
    "items": {"type": "string", "format": "uri"},
    "description": "RFC 8707 resource indicators: the access token's aud becomes these; each "
    "must be one of the client's registered audiences (invalid_target otherwise). A refresh "
    "or code exchange may narrow the original grant's resources, never widen them.",
}
_TOKEN_TYPE: Schema = {"const": "urn:ietf:params:oauth:token-type:access_token"}
# RFC 8693 §4.1: the actor, and the actors before it, nested.
_ACT: Schema = {
    "type": "object",
    "required": ["sub"],
    "properties": {"sub": _STRING, "act": {"$ref": "#/components/schemas/Actor"}},
    "additionalProperties": False,
    "description": "RFC 8693 §4.1: who acts for the subject (an exchanging client's id); "
    "`act` nests the actors before it",
}
_ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": NAME_MAX}
_DESCRIPTION: Schema = {"type": "string", "maxLength": DESCRIPTION_MAX}
# A public key must never carry the private members of RFC 7518 §6.3.2.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

SCHEMAS: Schema = {
    "Error": _object(
        ["error", "error_description"],
        {
            "error": {"type": "string", "minLength": 1, "examples": ["invalid_request"]},
            "error_description": _STRING,
        },
    ),
    "Signup": _object(
        ["username", "password"],
        {
            "username": {"type": "string", "pattern": "^[A-Za-z0-9._-]{3,64}$"},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
    ),
    "PasswordChange": _object(
        ["current_password", "new_password"],
        {
            "current_password": {"type": "string", "maxLength": 1024},
            "new_password": {"type": "string", "minLength": 8, "maxLength": 1024},
        },
    ),
    "User": _object(
        ["id", "username", "disabled", "created_at"],
        {"id": _ID, "username": _STRING, "disabled": {"type": "boolean"}, "created_at": _TIMESTAMP},
    ),
    "TokenRequest": _object(
        ["grant_type"],
        {
            "grant_type": {"enum": list(GRANT_TYPES)},
            "username": _STRING,
            "password": _STRING,
            "refresh_token": _STRING,
            "code": _STRING,
            "redirect_uri": _STRING,
            "code_verifier": _STRING,
            "device_code": _STRING,
            "scope": _SCOPE,
            "resource": _RESOURCE,
            "subject_token": {
                "type": "string",
                "description": "Token exchange (RFC 8693): a live access token of ours, aimed "
                "at a resource the exchanging client serves (one of its audiences)",
            },
            "subject_token_type": _TOKEN_TYPE,
            "actor_token": {
                "type": "string",
                "description": "Token exchange: an access token of ours naming who acts; its "
                "subject is nested in the new token's act",
            },
            "actor_token_type": _TOKEN_TYPE,
            "requested_token_type": _TOKEN_TYPE,
            "audience": {
                "type": "array",
                "items": _STRING,
                "description": "Token exchange: the target service(s); with resource, each "
                "must be one of the client's registered audiences (invalid_target otherwise)",
            },
            "client_id": _STRING,
            "client_secret": _STRING,
            **_CLIENT_ASSERTION,
        },
    ),
    "TokenResponse": _object(
        ["access_token", "token_type", "expires_in", "scope"],
        {
            "access_token": {"type": "string", "description": "An RFC 9068 JWT (RS256)"},
            "token_type": {"enum": ["Bearer", "DPoP"]},
            "expires_in": {"type": "integer", "minimum": 1},
            "refresh_token": {"type": "string", "description": "Opaque; rotates on each use"},
            "id_token": {"type": "string", "description": "OpenID Connect, with scope openid"},
            "issued_token_type": {
                **_TOKEN_TYPE,
                "description": "Token exchange (RFC 8693 §2.2.1) only: what access_token is",
            },
            "scope": _SCOPE,
        },
    ),
    "Actor": _ACT,
    "DeviceAuthorizationRequest": _object(
        [],
        {
            "scope": _SCOPE,
            "resource": _RESOURCE,
            "client_id": _STRING,
            "client_secret": _STRING,
            **_CLIENT_ASSERTION,
        },
    ),
    "DeviceAuthorization": _object(
        [
            "device_code",
            "user_code",
            "verification_uri",
            "verification_uri_complete",
            "expires_in",
            "interval",
        ],
        {
            "device_code": {"type": "string", "description": "Opaque; poll /oauth/token with it"},
            "user_code": {
                "type": "string",
                "pattern": "^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$",
                "description": "For the user to type at verification_uri (any case; the "
                "hyphen may be left out)",
            },
            "verification_uri": {"type": "string", "format": "uri"},
            "verification_uri_complete": {"type": "string", "format": "uri"},
            "expires_in": {"type": "integer", "minimum": 1},
            "interval": {"type": "integer", "minimum": 1},
        },
    ),
    "UserInfo": _object(["sub"], {"sub": _STRING, "preferred_username": _STRING}, closed=False),
    "TokenParameters": _object(
        ["token"],
        {
            "token": _STRING,
            "token_type_hint": {"enum": ["access_token", "refresh_token"]},
            "client_id": _STRING,
            "client_secret": _STRING,
            **_CLIENT_ASSERTION,
        },
    ),
    "Introspection": {
        "oneOf": [
            _object(["active"], {"active": {"const": False}}),
            _object(
                ["active", "scope", "client_id", "sub", "aud", "iss", "exp", "iat", "token_type"],
                {
                    "active": {"const": True},
                    "scope": _SCOPE,
                    "client_id": _STRING,
                    "username": _STRING,
                    "sub": _STRING,
                    "aud": {"oneOf": [_STRING, {"type": "array", "items": _STRING}]},
                    "iss": _STRING,
                    "exp": {"type": "integer"},
                    "iat": {"type": "integer"},
                    "jti": _STRING,
                    "act": {"$ref": "#/components/schemas/Actor"},
                    "token_type": {"enum": ["Bearer", "DPoP", "refresh_token"]},
                    "cnf": _object(["jkt"], {"jkt": _STRING}),
                },
            ),
        ]
    },
    "Revoked": {"type": "object", "maxProperties": 0},
    "PushedAuthorization": _object(
        ["request_uri", "expires_in"],
        {
            "request_uri": {
                "type": "string",
                "pattern": "^urn:ietf:params:oauth:request_uri:",
                "description": "For /oauth/authorize, with client_id; good once",
            },
            "expires_in": {"type": "integer", "minimum": 1},
        },
    ),
    "ServerMetadata": _object(
        [
            "issuer",
            "token_endpoint",
            "introspection_endpoint",
            "revocation_endpoint",
            "jwks_uri",
            "grant_types_supported",
            "token_endpoint_auth_methods_supported",
            "scopes_supported",
        ],
        {
            "issuer": {"type": "string", "format": "uri"},
            "token_endpoint": {"type": "string", "format": "uri"},
            "introspection_endpoint": {"type": "string", "format": "uri"},
            "revocation_endpoint": {"type": "string", "format": "uri"},
            "registration_endpoint": {"type": "string", "format": "uri"},
            "device_authorization_endpoint": {"type": "string", "format": "uri"},
            "jwks_uri": {"type": "string", "format": "uri"},
            "grant_types_supported": {"type": "array", "items": {"enum": list(GRANT_TYPES)}},
            "token_endpoint_auth_methods_supported": {"type": "array", "items": _STRING},
            "scopes_supported": {
                "type": "array",
                "items": {"enum": [*SCOPES, *OIDC_SCOPES]},
            },
        },
        closed=False,  # RFC 8414 metadata is extensible
    ),
    "ProtectedResourceMetadata": _object(
        ["resource", "authorization_servers"],
        {
            "resource": {"type": "string", "format": "uri", "description": "The audience"},
            "authorization_servers": {"type": "array", "items": {"type": "string"}},
            "scopes_supported": {"type": "array", "items": {"enum": list(SCOPES)}},
            "bearer_methods_supported": {"type": "array", "items": {"const": "header"}},
            "dpop_signing_alg_values_supported": {"type": "array", "items": _STRING},
            "dpop_bound_access_tokens_required": {"type": "boolean"},
        },
        closed=False,  # RFC 9728 metadata is extensible
    ),
    "JWKS": _object(
        ["keys"],
        {
            "keys": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["kty", "kid"],
                    "properties": {
                        "kty": {"const": "RSA"},
                        "kid": _STRING,
                        "use": {"const": "sig"},
                        "alg": {"const": "RS256"},
                        "n": _STRING,
                        "e": _STRING,
                        **{member: False for member in _PRIVATE_MEMBERS},
                    },
                },
            }
        },
    ),
    "JunkItem": _object(
        ["id", "name", "description", "created_at", "updated_at"],
        {
            "id": _ID,
            "name": _NAME,
            "description": _DESCRIPTION,
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
        },
    ),
    "JunkCreate": _object(
        ["name"], {"name": _NAME, "description": {**_DESCRIPTION, "default": ""}}
    ),
    "JunkUpdate": {
        **_object([], {"name": _NAME, "description": _DESCRIPTION}),
        "minProperties": 1,
    },
    "JunkPage": _object(
        ["items", "next_cursor"],
        {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/JunkItem"}},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        },
    ),
    "Health": _object(["status"], {"status": {"const": "ok"}}),
    "Ready": _object(["status", "schema"], {"status": {"const": "ok"}, "schema": _STRING}),
    "NotReady": _object(
        ["status", "reason"], {"status": {"const": "unavailable"}, "reason": _STRING}
    ),
    "OpenAPIDocument": _object(
        ["openapi", "info", "paths"],
        {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
        closed=False,
    ),
}
