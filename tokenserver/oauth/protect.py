"""The bearer check behind @require_oauth: signature, claims, revocation, user, scope."""

from __future__ import annotations

import time
from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector as _ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import MissingAuthorizationError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InsufficientScopeError, InvalidTokenError
from flask import current_app, g
from joserfc.errors import JoseError
from werkzeug.exceptions import HTTPException

from ..errors import error_response
from ..keys import current_keyring
from ..models import User
from . import tokens

REALM = "tokenserver"
_LEEWAY = 30  # seconds of clock skew allowed on `iat`


def claims_problem(claims: dict[str, Any]) -> str | None:
    """What is wrong with a verified token's registered claims, or None (RFC 9068 §4)."""
    settings = current_app.extensions["tokenserver.settings"]
    now = time.time()
    for name in ("iss", "sub", "aud", "exp", "iat", "jti", "client_id"):
        if name not in claims:
            return f"missing {name}"
    if claims["iss"] != settings.issuer:
        return "wrong issuer"
    audience = claims["aud"]
    if settings.audience not in (audience if isinstance(audience, list) else [audience]):
        return "wrong audience"
    if not isinstance(claims["exp"], int) or claims["exp"] <= now:
        return "expired"
    if not isinstance(claims["iat"], int) or claims["iat"] > now + _LEEWAY:
        return "issued in the future"
    return None


class AccessTokenValidator(BearerTokenValidator):
    """Validates our RFC 9068 JWTs on every request, including live revocation checks."""

    def authenticate_token(self, token_string: str) -> tokens.LiveToken:
        try:
            header, claims = tokens.verify_access_token(token_string, current_keyring())
        except (JoseError, ValueError, KeyError, TypeError):
            raise InvalidTokenError("The access token is invalid.", realm=REALM) from None
        # RFC 9068 §4: the `typ` header must say at+jwt, so an ID token cannot pass as one.
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise InvalidTokenError("The access token is invalid.", realm=REALM)
        problem = claims_problem(claims)
        if problem:
            raise InvalidTokenError(f"The access token is {_public(problem)}.", realm=REALM)
        live = tokens.live_access_token(claims)
        if live is None:
            raise InvalidTokenError("The access token is revoked.", realm=REALM)
        return live

    def validate_token(self, token: tokens.LiveToken, scopes: Any, request: Any) -> None:
        if self.scope_insufficient(token.scope, scopes):
            raise InsufficientScopeError()


def _public(problem: str) -> str:
    return "expired" if problem == "expired" else "invalid"


class ResourceProtector(_ResourceProtector):
    """Authlib's protector with RFC 6750 challenges and our JSON error shape."""

    def raise_error_response(self, error: OAuth2Error) -> None:
        headers = dict(error.get_headers())
        if isinstance(error, MissingAuthorizationError):
            # RFC 6750 §3.1: no credentials at all gets a bare challenge, without an error code.
            headers = {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
            response = error_response(401, "unauthorized", "A bearer token is required.", headers)
        else:
            if isinstance(error, InsufficientScopeError):
                headers["WWW-Authenticate"] = (
                    f'Bearer realm="{REALM}", error="insufficient_scope", '
                    f'error_description="{error.description}"'
                )
            response = error_response(
                error.status_code, error.error, error.description or error.error, headers
            )
        raise HTTPException(response=response)

    def acquire_token(self, scopes: Any = None, **kwargs: Any) -> tokens.LiveToken:
        token: tokens.LiveToken = super().acquire_token(scopes, **kwargs)
        g.current_user = token.user
        return token


require_oauth = ResourceProtector()
require_oauth.register_token_validator(AccessTokenValidator(realm=REALM))


def current_user() -> User:
    """The user whose bearer token authorised this request."""
    user: User | None = g.get("current_user")
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
