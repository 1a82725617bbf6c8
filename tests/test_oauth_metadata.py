"""RFC 8414 server metadata and the RFC 7517 JWKS."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from flask.testing import FlaskClient

from .conftest import Actions
from .helpers import PRIVATE_MEMBERS

ISSUER = "https://auth.example.com"


def test_metadata_describes_what_the_server_does(make_app: Any) -> None:
    client = make_app(issuer=ISSUER).test_client()
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    body = response.json
    assert body["issuer"] == ISSUER
    assert body["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert body["introspection_endpoint"] == f"{ISSUER}/oauth/introspect"
    assert body["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    assert body["device_authorization_endpoint"] == f"{ISSUER}/oauth/device_authorization"
    assert body["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert body["grant_types_supported"] == [
        "password",
        "refresh_token",
        "client_credentials",
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:device_code",
    ]
    assert body["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ]
    assert body["introspection_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ]
    assert "none" in body["revocation_endpoint_auth_methods_supported"]
    assert body["scopes_supported"] == ["junk:read", "junk:write", "openid", "profile"]
    assert body["authorization_endpoint"] == f"{ISSUER}/oauth/authorize"
    assert body["response_types_supported"] == ["code"]
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["authorization_response_iss_parameter_supported"] is True
    # RFC 8414 §2: private_key_jwt's algorithms, asymmetric only (never none, never HS*).
    for endpoint in ("token", "introspection", "revocation"):
        assert body[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == [
            "RS256",
            "PS256",
            "ES256",
            "EdDSA",
            "Ed25519",
        ]


def test_metadata_passes_authlibs_rfc8414_checks(make_app: Any) -> None:
    client = make_app(issuer=ISSUER).test_client()
    metadata = AuthorizationServerMetadata(
        client.get("/.well-known/oauth-authorization-server").json
    )
    for key in metadata.REGISTRY_KEYS:
        getattr(metadata, f"validate_{key}")()


def test_jwks_lists_the_signing_key_publicly(client: FlaskClient, actions: Actions) -> None:
    token = actions.login("alice")["access_token"]
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age" in response.headers["Cache-Control"]
    keys = response.json["keys"]
    assert all(not PRIVATE_MEMBERS & set(jwk) for jwk in keys)
    # PyJWT, as a resource server would use it, verifies our token from this set alone.
    key_set = pyjwt.PyJWKSet.from_dict(response.json)
    kid = pyjwt.get_unverified_header(token)["kid"]
    signing = next(k for k in key_set.keys if k.key_id == kid)
    claims = pyjwt.decode(
        token,
        signing.key,
        algorithms=["RS256"],
        audience="http://localhost:8000",
        issuer="http://localhost:8000",
    )
    assert claims["username"] == "alice"
