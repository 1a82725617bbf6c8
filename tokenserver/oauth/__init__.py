"""Authlib wired in one place: the authorization server, its grants and endpoints."""

from __future__ import annotations

import re
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError, InvalidClientError
from flask import Flask, current_app
from flask import request as flask_request
from werkzeug.datastructures import MultiDict

from .. import audit
from ..config import Settings
from ..errors import InvalidRequest
from ..keys import KeyRing
from ..models import OIDC_SCOPES, SCOPES, Client
from ..store import clients
from ..store.codes import PresentedCode
from . import client_auth, dpop, grants
from .assertions import PrivateKeyJWT
from .client_keys import ClientKeys
from .codes import CodeGrant, IdToken, RefreshIdToken, S256Challenge, spent_meanwhile
from .devices import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceIdToken
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .exchange import TokenExchangeGrant
from .logout import LogoutEndpoint
from .records import CodeSpentMeanwhile, RefreshCredential, record_issued
from .tokens import TokenGenerator, issued_claims

_DESCRIPTIONS = {
    "invalid_client": client_auth.FAILED,
    "invalid_grant": "The grant is invalid, expired or revoked.",
    "invalid_request": "The request is missing a parameter or is malformed.",
    "invalid_scope": "The requested scope is invalid or not allowed for this client.",
    "invalid_target": "The requested resource is invalid or not allowed for this client.",
    "unauthorized_client": "This client may not use this grant type.",
    "unsupported_grant_type": "This grant type is not supported.",
}


class _FormPayload(FlaskOAuth2Payload):
    """Parameters from the body only: RFC 6749 §3.2 and RFC 7009/7662 say form-encoded."""

    @property
    def data(self) -> MultiDict[str, str]:
        return self._request.form


class _Request(FlaskOAuth2Request):
    """Authlib's request, with body-only parameters and TLS judged by the issuer's URL."""

    def __init__(self, issuer: str) -> None:
        # TLS usually ends at a proxy in front of us, so Authlib's https check must look at the
        # address clients use (the issuer), not at the plain-HTTP hop that reaches gunicorn.
        OAuth2Request.__init__(
            self, flask_request.method, issuer + flask_request.path, headers=flask_request.headers
        )
        self._request = flask_request
        self.payload = _FormPayload(flask_request)


class AuthorizationServer(_AuthorizationServer):
    """Authlib's server with our request reading and RFC-conformant error statuses."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.clients = ClientCache()
        self.client_keys = ClientKeys()  # this worker's copies of clients' jwks_uri documents

    def init_app(self, app: Flask, query_client: Any = None, save_token: Any = None) -> None:
        super().init_app(app, query_client=query_client, save_token=save_token)
        # Authlib tries each allowed method in turn; ours allows one per request (RFC 6749 §2.3).
        self._client_auth = client_auth.ClientAuthentication(
            self.query_client, PrivateKeyJWT(self.settings.issuer, self.client_keys)
        )

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        try:
            return _Request(self.settings.issuer)
        except InsecureTransportError:
            # Never a 500: an http:// issuer off loopback is refused as Authlib would have it.
            raise InvalidRequest("OAuth 2 requires https: the issuer is not an https URL") from None

    def create_token_response(self, request: Any = None) -> Any:
        # RFC 9449 §5: a proof may come with any grant, and binds whatever tokens it issues.
        try:
            dpop.bind_token_request()
        except dpop.InvalidProof as exc:
            error = dpop.InvalidDPoPProofError(exc.reason)
            return self.handle_error_response(request, error)
        return super().create_token_response(request)

    def replayed_response(self, kind: str) -> Any:
        """The answer to a token request whose client assertion or DPoP proof, checked as
        fresh, turned out spent when it was stored (replay.deferred)."""
        error: OAuth2Error
        if kind == "dpop":
            error = dpop.InvalidDPoPProofError(
                "The DPoP proof is invalid: its jti has been used before."
            )
        else:
            audit.event("client.auth_failed", method="private_key_jwt", endpoint="token")
            error = InvalidClientError(status_code=401, description=client_auth.FAILED)
        return self.handle_error_response(self.create_oauth2_request(None), error)

    def handle_error_response(self, request: Any, error: OAuth2Error) -> Any:
        error.description = _in_our_words(error)
        if error.error == "invalid_client":
            # Authlib answers an unknown client_id sent in the body with 400; a failed client
            # authentication is 401 however it was tried (RFC 6749 §5.2 allows it; docs/api.md).
            error.status_code = 401
        return super().handle_error_response(request, error)


_AUTHLIB_MISSING = re.compile(r"Missing '(\w+)' in (?:request|payload)\.?")


def _in_our_words(error: OAuth2Error) -> str:
    """The error's description as the rest of the API words it.

    Authlib's own texts read differently ("The client cannot authenticate with methods: [...]",
    "grant_type=... is not supported", which echoes what was sent): any error Authlib raised
    gets ours; errors our subclasses raise keep the words they were given.
    """
    missing = _AUTHLIB_MISSING.fullmatch(error.description or "")
    if missing:
        return f"'{missing[1]}' is required"
    if error.description and not _raised_by_authlib(error):
        return str(error.description)
    return _DESCRIPTIONS.get(error.error, "The request was refused.")


def _raised_by_authlib(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("authlib.")


def current_server() -> AuthorizationServer:
    """The authorization server of the app handling this request."""
    server: AuthorizationServer = current_app.extensions["tokenserver.oauth"]
    return server


class ClientCache:
    """This worker's copies of the clients it has looked up, each kept for `ttl` seconds.

    Every token, introspection and revocation request authenticates a client, and clients
    change only through the CLI (which forgets its own copy at once). Elsewhere a deleted
    client, or a new secret, takes effect within `ttl`: a second of staleness saves a query on
    every request. Only found clients are kept; tokens, users and revocations are never cached.
    """

    def __init__(self, ttl: float = 1.0, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, Client]] = {}

    def get(self, client_id: str) -> Client | None:
        """The client with this id, from this worker's copy if it is fresh enough."""
        now = time.monotonic()
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        client = clients.find(client_id)
        if client is None:
            self._entries.pop(client_id, None)
            return None
        if len(self._entries) >= self.size:
            self._entries.clear()  # clients are few; a full cache means ids are being sprayed
        self._entries[client_id] = (now + self.ttl, client)
        return client

    def forget(self, client_id: str) -> None:
        """Drop this worker's copy of a client that has just changed."""
        self._entries.pop(client_id, None)


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
    # A scope no client may have is invalid_scope (Authlib checks this list, then the client's).
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
    server.register_endpoint(IntrospectionEndpoint)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(LogoutEndpoint)
    # Imported here: the registration endpoints use clients.py, which uses this package.
    from .registration import ConfigurationEndpoint, RegistrationEndpoint

    server.register_endpoint(RegistrationEndpoint)
    server.register_endpoint(ConfigurationEndpoint)
    app.extensions["tokenserver.oauth"] = server

    from .oidc import bp as oidc_bp
    from .routes import bp

    app.register_blueprint(bp)
    app.register_blueprint(oidc_bp)
