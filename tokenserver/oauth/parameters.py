"""What an authorization request may carry (RFC 6749 §3.1, OpenID Connect Core §3.1.2.1, §6)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import (
    RegistrationNotSupportedError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from werkzeug.datastructures import MultiDict

from ..models import OIDC_SCOPES, SCOPES

# RFC 6749 §3.1: no parameter more than once. Authlib checks response_type, client_id,
# redirect_uri, scope and state before the redirect URI is known, and the PKCE extension its
# own two; these come after. `resource` may repeat: RFC 8707 §2 names one resource per parameter.
_ONCE = (
    "nonce",
    "prompt",
    "max_age",
    "login_hint",
    "id_token_hint",
    "response_mode",
    "display",
    "ui_locales",
    "acr_values",
    "claims",
    "dpop_jkt",
)
# OpenID Connect Core §6.1, §6.2, §7.2.1: refused, not ignored, so a client relying on what
# a request object says is not given a code for the plain parameters instead.
_UNSUPPORTED: dict[str, type[OAuth2Error]] = {
    "request": RequestNotSupportedError,
    "request_uri": RequestURINotSupportedError,
    "registration": RegistrationNotSupportedError,
}
# Every parameter an authorization request may carry that we read, check or refuse; a pushed
# request (RFC 9126) keeps these only (RFC 6749 §3.1: unknown parameters are ignored).
AUTHORIZATION_PARAMETERS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        "resource",
        *_ONCE,
        *_UNSUPPORTED,
    }
)
# OpenID Connect Core §3.1.2.1; select_account is met by signing in again, as Keycloak does.
PROMPTS = ("none", "login", "consent", "select_account")
_MAX_AGE = re.compile(r"[0-9]{1,10}")  # seconds, ASCII digits; ten of them is over 300 years
_KNOWN_SCOPES = frozenset({*SCOPES, *OIDC_SCOPES})


def check(datalist: Mapping[str, Sequence[str]]) -> None:
    """Refuse a repeated, unsupported or malformed parameter (an OAuth2Error)."""
    for name in _ONCE:
        if len(datalist.get(name, ())) > 1:
            raise InvalidRequestError(f"'{name}' must not be given more than once.")
    for name, error in _UNSUPPORTED.items():
        if _value(datalist, name):
            raise error(f"'{name}' is not supported.")
    mode = _value(datalist, "response_mode")
    if mode and mode != "query":  # the one response mode discovery lists
        raise InvalidRequestError("Only response_mode=query is supported.")
    prompt = _value(datalist, "prompt")
    if prompt and not set(prompt.split()) <= set(PROMPTS):
        raise InvalidRequestError("'prompt' may hold only none, login, consent, select_account.")
    max_age = _value(datalist, "max_age")
    if max_age and not _MAX_AGE.fullmatch(max_age):
        raise InvalidRequestError("'max_age' must be a whole number of seconds.")


def understood_scope(scope: str | None) -> str | None:
    """`scope` without the values we do not know at all, if it asks for OpenID (`openid`).

    Without `openid` it is plain OAuth: an unknown scope stays, to be invalid_scope (RFC 6749
    §3.3). A scope we know but the client may not have is invalid_scope either way.
    """
    values = (scope or "").split()
    if "openid" not in values:
        return scope
    # OIDC Core §3.1.2.1: "Scope values used that are not understood ... SHOULD be ignored."
    kept = [value for value in values if value in _KNOWN_SCOPES]
    return scope if len(kept) == len(values) else " ".join(kept)


def with_understood_scope(parameters: MultiDict[str, str]) -> MultiDict[str, str]:
    """An authorization request's parameters, its scope as understood_scope leaves it."""
    scopes = parameters.getlist("scope")
    if len(scopes) != 1:  # none, or repeated and refused as such
        return parameters
    understood = understood_scope(scopes[0])
    if understood == scopes[0]:
        return parameters
    narrowed = parameters.copy()
    narrowed.setlist("scope", [understood or ""])
    return narrowed


def _value(datalist: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = datalist.get(name, ())
    return values[0] if values else None
