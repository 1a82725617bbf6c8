"""The authorization endpoint's decisions (RFC 6749 §4.1.1, OpenID Connect Core §3.1.2).

The pages call these: validate a request with Authlib, decide whether the user must sign in or
consent, and build every redirect back to the client (always with `iss`, RFC 9207).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from werkzeug.datastructures import MultiDict

from ..config import current_settings
from ..models import Client, utcnow
from ..store import consents
from .codes import CodeGrant, SignedIn
from .hints import hinted_subject
from .parameters import with_understood_scope
from .query import QueryRequest
from .resources import InvalidTargetError, audiences, requested
from .server import current_server

# RFC 9449 §10: dpop_jkt is an RFC 7638 SHA-256 thumbprint, base64url without padding.
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")
_MAX_NONCE = 255  # the column's width; OpenID Connect sets no limit, a random value needs far less
_TRIP = timedelta(seconds=60)  # from /login back to the request that sent the user, at most


class BadAuthorizationRequest(Exception):
    """An unknown client or an unverified redirect URI: shown as a page, never redirected to."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class RedirectBack(Exception):
    """An error the client hears about at its verified redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, redirect_uri: str, error: str, description: str, state: str | None) -> None:
        super().__init__(error)
        self.redirect_uri = redirect_uri
        self.error = error
        self.description = description
        self.state = state

    @property
    def location(self) -> str:
        """The client's redirect URI, carrying the error."""
        return error_location(self.redirect_uri, self.error, self.description, self.state)


class Next(enum.Enum):
    """What the authorization request needs before a code can be issued."""

    LOGIN = "login"
    CONSENT = "consent"
    CODE = "code"


@dataclass(frozen=True)
class Authorization:
    """A validated authorization request."""

    grant: CodeGrant
    client: Client
    scope: str
    redirect_uri: str
    state: str | None
    resources: tuple[str, ...] = ()  # RFC 8707: where the tokens will be good, if narrowed
    hinted_subject: str | None = None  # the user an id_token_hint names
    # When a pushed request (RFC 9126) was pushed, or when a request forcing a sign-in sent the
    # user to /login (freshness.py): a sign-in since then meets its prompt=login and max_age,
    # which it carries on every return through /login.
    since: datetime | None = None

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


def error_location(redirect_uri: str, error: str, description: str, state: str | None) -> str:
    """The client's redirect URI carrying an error (RFC 6749 §4.1.2.1, RFC 9207 `iss`)."""
    params = [("error", error), ("error_description", description)]
    if state:
        params.append(("state", state))
    params.append(("iss", current_settings().issuer))
    return str(add_params_to_uri(redirect_uri, params))


# Authlib raises these without a description; said as where we raise them ourselves.
_DESCRIPTIONS = {"login_required": "The user is not signed in."}


def validate(
    signed_in: SignedIn | None, parameters: MultiDict[str, str], since: datetime | None = None
) -> Authorization:
    """The request, checked by Authlib's grant; raises BadAuthorizationRequest or RedirectBack.

    `since`: when the request was pushed (RFC 9126), or sent the user to sign in, if it was."""
    try:
        request = QueryRequest(current_settings().issuer, with_understood_scope(parameters))
    except InsecureTransportError:
        raise BadAuthorizationRequest("OAuth 2 requires https: the issuer is not https.") from None
    request.user = signed_in
    state = request.payload.state
    try:
        # First: choosing the grant reads response_type and redirect_uri, and would redirect
        # an unsupported response_type to the first of two redirect URIs.
        CodeGrant.validate_no_multiple_request_parameter(request)
        grant = current_server().get_authorization_grant(request)
        grant.validate_consent_request()
    except ValueError:
        # Authlib will not build an error whose description would echo characters RFC 6749
        # §5.2 forbids (a non-ASCII response_type, say): the request is malformed, shown as such.
        raise BadAuthorizationRequest("The request has malformed parameters.") from None
    except OAuth2Error as error:
        if not error.redirect_uri:  # never redirect to a URI we could not verify
            raise BadAuthorizationRequest(error.description or error.error) from None
        description = (
            error.description or _DESCRIPTIONS.get(error.error) or error.error.replace("_", " ")
        )
        raise RedirectBack(error.redirect_uri, error.error, description, state) from None
    prompt = _prompts(request)
    if "none" in prompt and len(prompt) > 1:
        raise RedirectBack(grant.redirect_uri, "invalid_request", "prompt=none stands alone", state)
    nonce = request.payload.data.get("nonce") or ""
    if len(nonce) > _MAX_NONCE or not nonce.isprintable():
        raise RedirectBack(grant.redirect_uri, "invalid_request", "The nonce is malformed.", state)
    hint = request.payload.data.get("id_token_hint")
    hinted = hinted_subject(hint, request.client.client_id) if hint else None
    if hint and hinted is None:
        description = "The id_token_hint is not an ID token issued to this client."
        raise RedirectBack(grant.redirect_uri, "invalid_request", description, state)
    dpop_jkt = request.payload.data.get("dpop_jkt")
    if dpop_jkt is not None and not _THUMBPRINT.fullmatch(dpop_jkt):
        description = "The dpop_jkt is not a JWK SHA-256 thumbprint."
        raise RedirectBack(grant.redirect_uri, "invalid_request", description, state)
    try:
        resources = requested(request.payload.data, request.client)  # bound into the code
    except InvalidTargetError as error:
        raise RedirectBack(grant.redirect_uri, error.error, str(error.description), state) from None
    return Authorization(
        grant,
        request.client,
        request.scope,
        grant.redirect_uri,
        state,
        tuple(resources),
        hinted,
        since,
    )


def _prompts(request: Any) -> set[str]:
    return set((request.payload.data.get("prompt") or "").split())


def _max_age(request: Any) -> int | None:
    raw = request.payload.data.get("max_age")
    return int(raw) if raw and raw.isdigit() else None


def next_step(
    authorization: Authorization, signed_in: SignedIn | None, *, consenting: bool = False
) -> Next:
    """Sign in, consent, or issue the code; prompt=none turns the first two into errors.

    `consenting`: asked again at /consent, where the user may take their time over a question
    /oauth/authorize already sent them to with a fresh enough sign-in."""
    request = authorization.grant.request
    prompt, max_age = _prompts(request), _max_age(request)
    since = authorization.since
    # A sign-in since a request was pushed, or sent the user to /login, was made for it: it
    # meets prompt=login, and max_age with the moment the way back from /login takes (and
    # then the consent page). Without `since`, no earlier sign-in meets prompt=login.
    fresh = signed_in is not None and since is not None and signed_in.auth_time >= since
    trip = _TRIP if fresh else timedelta()
    stale = (
        signed_in is not None
        and max_age is not None
        and not (fresh and consenting)
        and utcnow() - signed_in.auth_time > timedelta(seconds=max_age) + trip
    )
    if signed_in is None or stale or (not fresh and {"login", "select_account"} & prompt):
        if "none" in prompt:
            _refuse(authorization, "login_required", "The user is not signed in.")
        return Next.LOGIN
    assert signed_in is not None
    if authorization.hinted_subject not in (None, str(signed_in.user.id)):
        # OpenID Connect Core §3.1.2.1: the client expects another user; never theirs instead.
        _refuse(authorization, "login_required", "The signed-in user is not the one hinted at.")
    # A first-party app skips the question unless it asks for it: OpenID Connect Core §3.1.2.1
    # says prompt=consent SHOULD ask, and an app that sends it wants the user to see it.
    skips = authorization.client.first_party or _allowed_before(authorization, signed_in)
    if "consent" in prompt or not skips:
        if "none" in prompt:
            _refuse(authorization, "consent_required", "The user has not allowed this app.")
        return Next.CONSENT
    return Next.CODE


def _allowed_before(authorization: Authorization, signed_in: SignedIn) -> bool:
    """Whether one earlier "allow" of the user's covers this request: all its scopes, at all
    its resources (RFC 8707). Two answers are never added up: scopes allowed at one resource
    are not thereby allowed at another."""
    scopes, at = set(authorization.scopes), audiences(authorization.resources)
    return any(
        scopes <= allowed.scopes and at <= audiences(allowed.resources)
        for allowed in consents.given(signed_in.user.id, authorization.client.client_id)
    )


def _refuse(authorization: Authorization, error: str, description: str) -> None:
    raise RedirectBack(authorization.redirect_uri, error, description, authorization.state)


def issue_code(authorization: Authorization, signed_in: SignedIn) -> str:
    """Issue a code for the signed-in user: the Location to send the browser to."""
    grant = authorization.grant
    _status, _body, headers = grant.create_authorization_response(grant.redirect_uri, signed_in)
    return str(dict(headers)["Location"])


def allow(authorization: Authorization, signed_in: SignedIn) -> str:
    """The user allowed: remember it for this (client, scopes, resources), then issue the code."""
    resources = authorization.resources
    if audiences(resources) == audiences([]):
        resources = ()  # our own routes, named or not: one answer, stored as naming none
    client_id = authorization.client.client_id
    consents.remember(signed_in.user.id, client_id, authorization.scope, resources)
    return issue_code(authorization, signed_in)


def deny(authorization: Authorization) -> str:
    """The user denied: the client hears access_denied."""
    return error_location(
        authorization.redirect_uri,
        "access_denied",
        "The user denied the request.",
        authorization.state,
    )
