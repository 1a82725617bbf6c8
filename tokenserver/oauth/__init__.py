"""Authlib wired in one place: the authorization server (server.py), its grants and endpoints."""

from __future__ import annotations

from typing import Any

from flask import Flask

from .. import audit, clients
from ..config import Settings
from ..keys import KeyRing
from ..models import OIDC_SCOPES, SCOPES
from ..store.codes import PresentedCode
from . import dpop, grants
from .codes import CodeGrant, IdToken, RefreshIdToken, S256Challenge, spent_meanwhile
from .devices import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceIdToken
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .exchange import TokenExchangeGrant
from .logout import LogoutEndpoint
from .pushed import PushedAuthorizationEndpoint
from .records import CodeSpentMeanwhile, RefreshCredential, record_issued
from .registration import ConfigurationEndpoint, RegistrationEndpoint
from .server import AuthorizationServer
from .tokens import TokenGenerator, issued_claims


def _who(request: Any) -> dict[str, Any]:
    """The audit fields naming client and user, read before a commit expires them."""
    fields: dict[str, Any] = {"client_id": request.client.client_id}
    if request.user is not None:
        fields |= {"user_id": request.user.id, "username": request.user.username}
    return fields


def _audit_issued(
    request: Any, who: dict[str, Any], claims: dict[str, Any], family_id: str, refreshed: bool
) -> None:
    """One audit line per token response: who got what, never the token itself."""
    fields = {**who, "family_id": family_id, "jti": claims["jti"], "scope": claims["scope"]}
    if "cnf" in claims:
        fields["dpop_jkt"] = claims["cnf"]["jkt"]  # a public key's thumbprint, no secret
    if refreshed:
        audit.event("token.refreshed", **fields)
        return
    audit.event("token.issued", grant_type=request.payload.grant_type, **fields)


def init_oauth(app: Flask) -> None:
    """Build this app's authorization server, its grants and endpoints, and the routes."""
    settings: Settings = app.extensions["tokenserver.settings"]
    keyring: KeyRing = app.extensions["tokenserver.keyring"]

    def save_token(token: dict[str, Any], request: Any) -> None:
        parent: RefreshCredential | None = request.refresh_token  # set by the refresh grant only
        # Set by the code grant (the device grant borrows the attribute for its id_token).
        code = request.authorization_code
        code = code if isinstance(code, PresentedCode) else None
        # The code, or the device approval, that signed the user in (set by their grants).
        signed_in = code or getattr(request, "credential", None)
        claims = issued_claims(token["access_token"])
        who = _who(request)
        try:
            family_id = record_issued(
                token,
                claims,
                request.client,
                request.user,
                settings.refresh_token_ttl,
                parent,
                session_max_age=settings.session_max_age,
                resources=getattr(request, "resources", None),  # set by ResourceIndicators grants
                code_hash=code.code_hash if code is not None else None,
                # The approval's browser session must still be live (a code's is read as it
                # is spent); the login keeps it and the sign-in's time for refreshed id_tokens.
                session_id=getattr(signed_in, "session_id", None),
                auth_time=getattr(signed_in, "auth_time", None),
                # A device approval must still stand (the app may have been signed out since).
                device_code_hash=getattr(signed_in, "device_code_hash", None),
                # RFC 9449 §5: a public client's refresh tokens are bound to its DPoP key.
                dpop_jkt=dpop.bound_key() if request.client.is_public else None,
            )
        except CodeSpentMeanwhile:
            # Two exchanges of one code at once: the loser is a replay, as if it came later.
            assert code is not None
            spent_meanwhile(request.client.client_id, code.code_hash)
            raise
        if parent is not None and parent.within_grace:
            who["within_grace"] = True  # a spent token presented again, within the reuse grace
        _audit_issued(request, who, claims, family_id, refreshed=parent is not None)

    server = AuthorizationServer(settings)
    server.init_app(app, query_client=server.clients.get, save_token=save_token)
    # A scope no client may have is invalid_scope (Authlib checks this list, then the client's);
    # an OpenID request's are dropped before (parameters.understood_scope).
    server.scopes_supported = [*SCOPES, *OIDC_SCOPES]
    server.register_token_generator(
        "default",
        TokenGenerator(settings.issuer, settings.audience, settings.access_token_ttl, keyring),
    )
    if settings.password_grant:  # RFC 9700 §2.4: a deployment may turn it off
        server.register_grant(grants.PasswordGrant)
    server.register_grant(grants.RefreshGrant, [RefreshIdToken()])
    server.register_grant(CodeGrant, [S256Challenge(required=True), IdToken()])
    server.register_grant(grants.ClientCredentialsGrant)
    server.register_grant(TokenExchangeGrant)
    server.register_grant(DeviceCodeGrant, [DeviceIdToken()])
    server.register_endpoint(DeviceAuthorizationEndpoint)
    server.register_endpoint(PushedAuthorizationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(LogoutEndpoint)
    server.register_endpoint(RegistrationEndpoint)
    server.register_endpoint(ConfigurationEndpoint)
    clients.on_change(app, server.clients.forget)  # this worker sees a client's change at once
    dpop.init_app(app)  # DPoP-Nonce on the answers to DPoP requests, on every route
    app.extensions["tokenserver.oauth"] = server

    from .oidc import bp as oidc_bp
    from .routes import bp

    app.register_blueprint(bp)
    app.register_blueprint(oidc_bp)
