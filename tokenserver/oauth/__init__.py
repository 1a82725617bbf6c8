"""Authlib wired in one place: the authorization server, its grants and endpoints."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2 import OAuth2Error
from flask import Flask
from sqlalchemy import select

from ..config import Settings
from ..extensions import db
from ..models import SCOPES, Client
from . import grants
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .tokens import RefreshCredential, TokenGenerator, record_issued


class AuthorizationServer(_AuthorizationServer):
    """Authlib's server with every OAuth error carrying a description, as our contract says."""

    def handle_error_response(self, request: Any, error: OAuth2Error) -> Any:
        if not error.description:
            error.description = _DESCRIPTIONS.get(error.error, "The request was refused.")
        return super().handle_error_response(request, error)


_DESCRIPTIONS = {
    "invalid_client": "Client authentication failed.",
    "invalid_grant": "The grant is invalid, expired or revoked.",
    "invalid_request": "The request is missing a parameter or is malformed.",
    "invalid_scope": "The requested scope is invalid or not allowed for this client.",
    "unauthorized_client": "This client may not use this grant type.",
    "unsupported_grant_type": "This grant type is not supported.",
    "unsupported_token_type": "This token type is not supported.",
}

server = AuthorizationServer()


def _query_client(client_id: str) -> Client | None:
    return db.session.scalars(select(Client).where(Client.client_id == client_id)).first()


def init_oauth(app: Flask) -> None:
    """Bind the authorization server, its grants and endpoints to the app."""
    settings: Settings = app.extensions["tokenserver.settings"]
    keyring = app.extensions["tokenserver.keyring"]

    def save_token(token: dict[str, Any], request: Any) -> None:
        parent = getattr(request, "refresh_token", None)
        record_issued(
            token,
            request.client,
            request.user,
            settings.refresh_token_ttl,
            parent if isinstance(parent, RefreshCredential) else None,
        )

    server.init_app(app, query_client=_query_client, save_token=save_token)
    server.scopes_supported = list(SCOPES)
    server.register_token_generator(
        "default",
        TokenGenerator(settings.issuer, settings.audience, settings.access_token_ttl, keyring),
    )
    server.register_grant(grants.PasswordGrant)
    server.register_grant(grants.RefreshGrant)
    server.register_grant(grants.ClientCredentialsGrant)
    server.register_endpoint(IntrospectionEndpoint)
    server.register_endpoint(RevocationEndpoint)

    from .routes import bp

    app.register_blueprint(bp)
