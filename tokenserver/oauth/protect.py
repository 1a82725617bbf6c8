"""The bearer check behind @require_oauth: signature, claims, revocation, user, scope."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector as _ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import MissingAuthorizationError, UnsupportedTokenTypeError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InsufficientScopeError, InvalidTokenError
from flask import g
from werkzeug.exceptions import HTTPException

from ..errors import error_response
from ..models import Subject
from . import records
from .tokens import TokenRejected, verified_claims

REALM = "tokenserver"


class AccessTokenValidator(BearerTokenValidator):
    """Validates our RFC 9068 JWTs on every request, including live revocation checks."""

    def authenticate_token(self, token_string: str) -> records.LiveToken:
        try:
            claims = verified_claims(token_string)
        except TokenRejected as exc:
            raise InvalidTokenError(f"The access token is {exc.reason}.", realm=REALM) from None
        # Checked per request, not cached: revocation and disabling take effect at once.
        live = records.live_access_token(claims)
        if live is None:
            raise InvalidTokenError("The access token is revoked.", realm=REALM)
        return live

    def validate_token(self, token: records.LiveToken, scopes: Any, request: Any) -> None:
        if self.scope_insufficient(token.scope, scopes):
            raise _InsufficientScope(scopes)


class _InsufficientScope(InsufficientScopeError):
    """Authlib sends no challenge with insufficient_scope; RFC 6750 §3 names the scope needed."""

    def __init__(self, scopes: list[str] | None) -> None:
        super().__init__()
        self.scopes = scopes or []

    def get_headers(self) -> list[tuple[str, str]]:
        challenge = f'Bearer realm="{REALM}", error="{self.error}"'
        if self.scopes:
            challenge += f', scope="{" ".join(self.scopes)}"'
        return [*super().get_headers(), ("WWW-Authenticate", challenge)]


class ResourceProtector(_ResourceProtector):
    """Authlib's protector with RFC 6750 challenges and our JSON error shape."""

    def raise_error_response(self, error: OAuth2Error) -> None:
        if isinstance(error, (MissingAuthorizationError, UnsupportedTokenTypeError)):
            # RFC 6750 §3.1: no bearer token at all (no header, or another scheme) gets a bare
            # challenge; Authlib would add an error code.
            headers = {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
            response = error_response(401, "unauthorized", "A bearer token is required.", headers)
        else:
            response = error_response(
                error.status_code,
                error.error,
                error.description or error.error,
                dict(error.get_headers()),
            )
        raise HTTPException(response=response)

    def acquire_token(self, scopes: Any = None, **kwargs: Any) -> records.LiveToken:
        token: records.LiveToken = super().acquire_token(scopes, **kwargs)
        g.current_user = token.user
        return token


require_oauth = ResourceProtector()
require_oauth.register_token_validator(AccessTokenValidator(realm=REALM))


def current_user() -> Subject:
    """The user whose bearer token authorised this request."""
    user: Subject | None = g.get("current_user")
    if user is None:
        # A client-credentials token has no user; the user routes are not for it.
        raise HTTPException(
            response=error_response(
                403,
                "insufficient_scope",
                "This route needs a user's token.",
                {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
            )
        )
    return user
