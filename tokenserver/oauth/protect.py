"""The token check behind @require_oauth: Bearer or DPoP, signature, claims, revocation, scope."""

from __future__ import annotations

from typing import Any, NoReturn

from authlib.integrations.flask_oauth2 import ResourceProtector as _ResourceProtector
from authlib.integrations.flask_oauth2 import current_token
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import MissingAuthorizationError, UnsupportedTokenTypeError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InsufficientScopeError, InvalidTokenError
from flask import Response, g
from flask import request as flask_request
from werkzeug.exceptions import HTTPException

from ..config import current_settings
from ..errors import error_response
from ..models import Subject
from ..payloads import given
from ..resource_uris import resource_metadata_url
from . import dpop, records
from .tokens import TokenRejected, verified_token

REALM = "tokenserver"
# RFC 9449 §7.1: the DPoP challenge names the proof algorithms we accept.
_ALGS = f'algs="{" ".join(dpop.ALGORITHMS)}"'


class AccessTokenValidator(BearerTokenValidator):
    """Validates our RFC 9068 JWTs on every request, including live revocation checks."""

    def authenticate_token(self, token_string: str) -> records.LiveToken:
        try:
            verified = verified_token(token_string)
        except TokenRejected as exc:
            raise InvalidTokenError(f"The access token is {exc.reason}.", realm=REALM) from None
        # Checked per request, not cached: revocation and disabling take effect at once.
        live = records.live_access_token(verified.claims, verified.kid)
        if live is None:
            raise InvalidTokenError("The access token is revoked.", realm=REALM)
        return live

    def validate_token(self, token: records.LiveToken, scopes: Any, request: Any) -> None:
        if token.dpop_jkt is not None:
            # RFC 9449 §7.2: a bound token is only good with a proof of its key, so a stolen
            # one sent as a plain bearer token is refused.
            raise _DPoPError("The access token is bound to a DPoP key: use the DPoP scheme.")
        if self.scope_insufficient(token.scope, scopes):
            raise _InsufficientScope(scopes, "Bearer")


class DPoPTokenValidator(AccessTokenValidator):
    """RFC 9449 §7: `Authorization: DPoP <token>` with a proof signed by the token's key."""

    TOKEN_TYPE = "dpop"

    def authenticate_token(self, token_string: str) -> records.LiveToken:
        try:
            return super().authenticate_token(token_string)
        except InvalidTokenError as exc:
            raise _DPoPError(exc.description) from None

    def validate_token(self, token: records.LiveToken, scopes: Any, request: Any) -> None:
        if token.dpop_jkt is None:
            raise _DPoPError("The access token is not bound to a DPoP key: use Bearer.")
        # The string Authlib has just parsed the token from: the proof's `ath` must hash it.
        token_string = request.headers["Authorization"].split(None, 1)[1]
        try:
            jkt = dpop.request_proof(token_string, expected_jkt=token.dpop_jkt)
        except dpop.InvalidProof as exc:
            raise _DPoPError(exc.reason, exc.error) from None
        if jkt is None:
            raise _DPoPError("A DPoP proof is required with a DPoP token.", "invalid_dpop_proof")
        if self.scope_insufficient(token.scope, scopes):
            raise _InsufficientScope(scopes, "DPoP")


class _DPoPError(OAuth2Error):
    """A refused DPoP request: 401 with a DPoP challenge naming our algorithms (RFC 9449 §7.1)."""

    status_code = 401

    def __init__(self, description: str, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.error = error

    def get_headers(self) -> list[tuple[str, str]]:
        challenge = (
            f'DPoP realm="{REALM}", error="{self.error}", '
            f'error_description="{self.description}", {_ALGS}'
        )
        return [*super().get_headers(), ("WWW-Authenticate", challenge)]


class _InsufficientScope(InsufficientScopeError):
    """Authlib sends no challenge with insufficient_scope; RFC 6750 §3 names the scope needed."""

    def __init__(
        self, scopes: list[str] | None, scheme: str, description: str | None = None
    ) -> None:
        super().__init__(description)
        self.scopes = scopes or []
        self.scheme = scheme

    def get_headers(self) -> list[tuple[str, str]]:
        challenge = f'{self.scheme} realm="{REALM}", error="{self.error}"'
        if self.scopes:
            challenge += f', scope="{" ".join(self.scopes)}"'
        if self.scheme == "DPoP":
            challenge += f", {_ALGS}"
        return [*super().get_headers(), ("WWW-Authenticate", challenge)]


class _MoreThanOneToken(OAuth2Error):
    """RFC 6750 §3.1: a request that presents two access tokens is invalid_request (400)."""

    error = "invalid_request"
    status_code = 400
    description = "Send one access token, in one Authorization header."


class ResourceProtector(_ResourceProtector):
    """Authlib's protector with RFC 6750 and RFC 9449 challenges and our JSON error shape."""

    def parse_request_authorization(self, request: Any) -> tuple[Any, str]:
        validator, token_string = super().parse_request_authorization(request)
        # A WSGI server joins two Authorization headers with a comma (PEP 3333), and no token
        # (RFC 6750 §2.1 b64token) holds a comma or a space: two credentials, not one invalid
        # token, which a client would take as its good token gone bad.
        if "," in token_string or len(token_string.split()) != 1:
            raise _MoreThanOneToken()
        return validator, token_string

    def raise_error_response(self, error: OAuth2Error) -> NoReturn:
        if isinstance(error, (MissingAuthorizationError, UnsupportedTokenTypeError)):
            # RFC 6750 §3.1: no bearer token at all (no header, or another scheme) gets a bare
            # challenge; Authlib would add an error code. RFC 9449 §7.1: and one for DPoP.
            response = _both_schemes(401, "unauthorized", "A bearer token is required.")
        elif isinstance(error, _MoreThanOneToken):
            # Either scheme may be the one the client meant.
            response = _both_schemes(400, error.error, error.description, named=True)
        else:
            response = error_response(
                error.status_code,
                error.error,
                error.description or error.error,
                dict(error.get_headers()),
            )
        raise HTTPException(response=_naming_metadata(response))

    def acquire_token(self, scopes: Any = None, **kwargs: Any) -> records.LiveToken:
        token: records.LiveToken = super().acquire_token(scopes, **kwargs)
        g.current_user = token.user
        return token


class FormBodyResourceProtector(ResourceProtector):
    """Also takes a bearer token as `access_token` in a POST's form body (RFC 6750 §2.2), as
    OpenID Connect Core §5.3.1 lets a client send it to userinfo; Authlib reads the header only.
    """

    def parse_request_authorization(self, request: Any) -> tuple[Any, str]:
        in_body = _form_body_token()
        if in_body is None:
            return super().parse_request_authorization(request)
        if "Authorization" in flask_request.headers or len(in_body) != 1:
            raise _MoreThanOneToken()  # RFC 6750 §2: one method, one token
        token_string = in_body[0]
        if not token_string or "," in token_string or len(token_string.split()) != 1:
            raise InvalidTokenError("The access token is malformed.", realm=REALM)
        return self.get_token_validator("bearer"), token_string


def _form_body_token() -> list[str] | None:
    """The `access_token` values of a form-encoded POST (never a GET's query: RFC 6750 §2.2);
    one sent without a value is as if left out, as for every OAuth parameter (RFC 6749 §3.1)."""
    if flask_request.method != "POST" or flask_request.mimetype != _FORM:
        return None
    values = given(flask_request.form).getlist("access_token")
    return values or None


_FORM = "application/x-www-form-urlencoded"


def _protector(protector: ResourceProtector) -> ResourceProtector:
    protector.register_token_validator(AccessTokenValidator(realm=REALM))
    protector.register_token_validator(DPoPTokenValidator(realm=REALM))
    return protector


require_oauth = _protector(ResourceProtector())
require_oauth_or_form = _protector(FormBodyResourceProtector())


def _both_schemes(status: int, error: str, description: str, *, named: bool = False) -> Response:
    """An error answer challenging in both schemes; `named` puts the error in the challenges."""
    params = f', error="{error}", error_description="{description}"' if named else ""
    response = error_response(
        status, error, description, {"WWW-Authenticate": f'Bearer realm="{REALM}"{params}'}
    )
    response.headers.add("WWW-Authenticate", f'DPoP realm="{REALM}"{params}, {_ALGS}')
    return response


def current_user() -> Subject:
    """The user whose bearer token authorised this request."""
    user: Subject | None = g.get("current_user")
    if user is None:
        # A client-credentials token has no user; the user routes are not for it. The challenge
        # names the scheme the token came in (RFC 9449 §7.1: a DPoP one names our algorithms).
        scheme = "DPoP" if current_token.dpop_jkt is not None else "Bearer"
        description = "This route needs a user's token."
        require_oauth.raise_error_response(_InsufficientScope(None, scheme, description))
    return user


def _naming_metadata(response: Response) -> Response:
    """RFC 9728 §5.1: every challenge names where the metadata of the resource we serve lives,
    so a client that meets our 401 first (an AI agent, say) finds how to get a token."""
    url = resource_metadata_url(current_settings().audience)
    if url is not None:
        challenges = response.headers.getlist("WWW-Authenticate")
        response.headers.setlist(
            "WWW-Authenticate", [f'{each}, resource_metadata="{url}"' for each in challenges]
        )
    return response
