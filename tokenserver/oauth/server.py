"""The authorization server (Authlib's, with our request reading, errors and client lookup),
and this worker's client cache. Built by init_oauth (oauth/__init__.py); routes reach it through
current_server().
"""

from __future__ import annotations

import re
import time
from functools import cached_property
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    InsecureTransportError,
    InvalidClientError,
    InvalidRequestError,
    UnsupportedResponseTypeError,
)
from flask import Flask, current_app
from flask import request as flask_request
from werkzeug.datastructures import MultiDict

from .. import audit
from ..config import Settings
from ..errors import InvalidRequest, not_a_protocol_step
from ..models import Client
from ..payloads import given
from ..store import clients
from . import client_auth, dpop
from .assertions import PrivateKeyJWT
from .client_keys import ClientKeys
from .protect import REALM

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
    """Parameters from the body only: RFC 6749 §3.2 and RFC 7009/7662 say form-encoded.

    One sent without a value is left out (payloads.given)."""

    @cached_property
    def data(self) -> MultiDict[str, str]:
        return given(self._request.form)


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

    @property
    def form(self) -> MultiDict[str, str]:
        # Authlib's grants read the body here (code, code_verifier, refresh_token, username...):
        # the same parameters as the payload, those sent without a value left out.
        return self.payload.data


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

    def authenticate_client(self, request: Any, methods: list[str], endpoint: str = "token") -> Any:
        client = super().authenticate_client(request, methods, endpoint)
        # RFC 9449 §5.2: a client registered dpop_bound_access_tokens gets no unbound token.
        # Checked once the client is authenticated (a stranger learns nothing of its metadata)
        # and before any grant reads its code or refresh token, so a refusal spends nothing.
        if endpoint == "token" and client.dpop_bound and dpop.bound_key() is None:
            raise dpop.InvalidDPoPProofError("A DPoP proof is required for this client.")
        return client

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        try:
            return _Request(self.settings.issuer)
        except InsecureTransportError:
            # Never a 500: an http:// issuer off loopback is refused as Authlib would have it.
            raise InvalidRequest("OAuth 2 requires https: the issuer is not an https URL") from None

    def get_authorization_grant(self, request: Any) -> Any:
        try:
            return super().get_authorization_grant(request)
        except UnsupportedResponseTypeError as error:
            if not request.payload.response_type:
                # RFC 6749 §4.1.2.1: a missing parameter (§3.1: or an empty one) is
                # invalid_request; unsupported_response_type is for one we do not offer.
                description = "'response_type' is required: response_type=code."
                raise InvalidRequestError(description, redirect_uri=error.redirect_uri) from None
            # Authlib's description is the response_type as sent: say what is supported instead.
            error.description = "Only response_type=code is supported."
            raise

    def create_token_response(self, request: Any = None) -> Any:
        # RFC 9449 §5: a proof may come with any grant, and binds whatever tokens it issues.
        # Checked before the client or the grant: a proof refused (for its nonce, say) leaves
        # the client's assertion, the code and the refresh token unspent for the retry.
        try:
            dpop.bind_token_request()
        except dpop.InvalidProof as exc:
            return self.handle_error_response(request, dpop.refusal(exc))
        return super().create_token_response(request)

    def replayed_response(self, kind: str) -> Any:
        """The answer to a token request whose client assertion or DPoP proof, checked as
        fresh, turned out spent when it was stored (replay.deferred)."""
        # A device's poll may have marked its answer (authorization_pending) a protocol step;
        # a replay is a failure, which the per-IP limit must count.
        not_a_protocol_step()
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
        response = super().handle_error_response(request, error)
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.startswith("Basic "):
            # RFC 7617 §2: a Basic challenge names its realm; Authlib's names none.
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", {challenge[6:]}'
        return response


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
    change only through the CLI and RFC 7592 (the process making the change forgets its own
    copy at once: clients.on_change). Elsewhere a deleted client, or a new secret, takes effect
    within `ttl`: a second of staleness saves a query on every request. Only found clients are
    kept; tokens, users and revocations are never cached.
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
