"""What RFC 8414 metadata and OpenID Connect Discovery publish (the same document under both),
and the RFC 9728 metadata of the resource our own routes serve."""

from __future__ import annotations

from typing import Any

from ..config import Settings, current_settings
from ..keys import ALGORITHM
from ..models import GRANT_TYPES, OIDC_SCOPES, SCOPES
from ..resource_uris import resource_metadata_url
from . import dpop
from .client_keys import ALGORITHMS
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .grants import PasswordGrant
from .parameters import PROMPTS


def server_metadata(issuer: str) -> dict[str, Any]:
    """What RFC 8414 and OpenID Connect Discovery publish: the same endpoints in both."""
    settings = current_settings()
    audience = settings.audience
    grant_types = [name for name in GRANT_TYPES if name != "password" or settings.password_grant]
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
        # RFC 9728 §4: the resource our own bearer routes serve, when it can publish metadata.
        **({"protected_resources": [audience]} if resource_metadata_url(audience) else {}),
        **browser_metadata(issuer),
    }


def resource_metadata(settings: Settings) -> dict[str, Any]:
    """RFC 9728 §2: what a client (an AI agent, say) needs to get a token for our own routes."""
    return {
        "resource": settings.audience,
        "authorization_servers": [settings.issuer],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
        "dpop_bound_access_tokens_required": False,
        "resource_name": "tokenserver",
        "resource_documentation": f"{settings.issuer}/openapi.json",
    }


def browser_metadata(issuer: str) -> dict[str, Any]:
    """The members RFC 8414 and OpenID discovery share for browser sign-in."""
    return {
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        # RFC 9126 §5: requests may be pushed first; not required of any client.
        "pushed_authorization_request_endpoint": f"{issuer}/oauth/par",
        "require_pushed_authorization_requests": False,
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "end_session_endpoint": f"{issuer}/oauth/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        # RFC 9207: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": True,
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "subject_types_supported": ["public"],
        "claims_supported": [
            "sub",
            "preferred_username",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "at_hash",
            "sid",
        ],
        "prompt_values_supported": list(PROMPTS),
        # OpenID Connect Discovery §3: request_uri_parameter_supported is true when left out;
        # the request_uri of a pushed request (RFC 9126) is not the request object it means.
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
