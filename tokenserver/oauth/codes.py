"""The authorization code grant with PKCE (RFC 7636) and OpenID Connect's id_token, on Authlib.

Each class overrides Authlib only where our contract differs (README "Browser sign-in").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, OpenIDToken, UserInfo
from flask import g
from joserfc.jwk import RSAKey

from .. import audit
from ..config import current_settings
from ..digests import digest
from ..keys import ALGORITHM, current_keyring
from ..models import Client, Subject
from ..store import codes, users
from ..store.tokens import revoking
from . import dpop, parameters
from .grants import _AUTH_METHODS
from .records import RefreshCredential
from .resources import ResourceIndicators, requested

CODE_TTL = 60  # seconds: RFC 6749 §4.1.2 says short; our contract says at most 60
_MAX_CODE_LENGTH = 512
UNREGISTERED_REDIRECT_URI = "The redirect_uri is not one this app registered."


@dataclass(frozen=True)
class SignedIn:
    """The user an authorization is granted for, with their browser session's facts."""

    user: Subject
    session_id: str
    auth_time: datetime

    def get_user_id(self) -> int:
        return self.user.id


class CodeGrant(ResourceIndicators, grants.AuthorizationCodeGrant):
    """RFC 6749 §4.1: codes stored as digests, spent once, bound to what issued them."""

    # Authlib allows only confidential clients here; public apps use `none` with PKCE.
    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: Client) -> str:
        # Authlib's refusal repeats the redirect_uri as sent, and our error page shows it: any
        # link could make our own page say what it liked ("...Call 555-0100"). Say what is wrong.
        try:
            redirect_uri: str = grants.AuthorizationCodeGrant.validate_authorization_redirect_uri(
                request, client
            )
        except InvalidRequestError as error:
            if request.payload.redirect_uri:
                error.description = UNREGISTERED_REDIRECT_URI
            raise
        return redirect_uri

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        try:
            # Authlib ignores what it does not know; a client relying on it must hear otherwise.
            parameters.check(self.request.payload.datalist)
        except OAuth2Error as error:
            error.redirect_uri = redirect_uri  # verified by now: the client hears of it there
            raise
        return redirect_uri

    def create_authorization_response(self, redirect_uri: str, grant_user: Any) -> Any:
        # RFC 9207: the response names its issuer, so a client talking to several servers
        # cannot be sent another server's code (mix-up attacks).
        self.redirect_uri = redirect_uri  # where the code goes: save_authorization_code keeps it
        status, body, headers = super().create_authorization_response(redirect_uri, grant_user)
        location = add_params_to_uri(headers[0][1], [("iss", current_settings().issuer)])
        return status, body, [("Location", location)]

    def save_authorization_code(self, code: str, request: Any) -> None:
        signed_in: SignedIn = request.user
        data = request.payload.data
        bound = codes.NewCode(
            client_id=request.client.client_id,
            user_id=signed_in.user.id,
            redirect_uri=request.payload.redirect_uri,  # None if left out (RFC 6749 §4.1.3)
            sent_to=self.redirect_uri,  # even when left out: the client's only one
            scope=request.scope,
            code_challenge=data["code_challenge"],
            code_challenge_method=data.get("code_challenge_method") or "S256",
            nonce=data.get("nonce"),
            auth_time=signed_in.auth_time,
            session_id=signed_in.session_id,
            # Checked at /oauth/authorize (authorize.validate); the exchange may only narrow it.
            resources=" ".join(requested(data, request.client)),
            dpop_jkt=data.get("dpop_jkt"),  # checked by authorize.validate
        )
        codes.save(digest(code), bound, CODE_TTL)  # never the code itself

    def granted_resources(self) -> list[str]:
        # RFC 8707 §2.2: the token request may narrow the code's resources, never widen them.
        code: codes.PresentedCode = self.request.authorization_code
        return code.resources.split()

    def query_authorization_code(self, code: str, client: Client) -> codes.PresentedCode | None:
        # Authlib reads here and deletes after issuing (two exchanges could both win); we read
        # here and spend with one conditional UPDATE in the transaction that stores the tokens
        # (records.record_issued); a replay revokes what the code issued.
        if not code.isascii() or len(code) > _MAX_CODE_LENGTH:
            return None
        outcome = codes.present(digest(code), client.client_id)
        if outcome.replayed:
            reuse_detected(client.client_id, outcome.family_id)
        found = outcome.code
        if found is not None and not _sent_to_registered(found, client):
            # The client dropped that URI since (RFC 7592): whoever holds it now may hold the code.
            raise InvalidGrantError("The code's redirect URI is no longer registered.")
        bound, presented = (found.dpop_jkt if found else None), dpop.bound_key()
        if bound is not None and bound != presented:
            # RFC 9449 §10: a code bound to a key is useless to whoever intercepts it.
            raise InvalidGrantError(dpop.bound_elsewhere("code", presented))
        return _still_registered(found, client) if found is not None else None

    def delete_authorization_code(self, authorization_code: codes.PresentedCode) -> None:
        pass  # spent with the tokens it issued, in one transaction

    def authenticate_user(self, authorization_code: codes.PresentedCode) -> Subject | None:
        # Its browser session is checked where the tokens are stored (store.tokens.issuing._issue).
        user = users.subject(authorization_code.user_id)
        return None if user is None or user.disabled else user  # disabled since: invalid_grant


def _still_registered(code: codes.PresentedCode, client: Client) -> codes.PresentedCode:
    """The code with the part of its scope the client may still have: one that narrowed its
    registered scope since the consent (RFC 7592) gets the rest, as its refresh tokens do;
    Authlib would refuse the whole code. Nothing left is invalid_scope, the code unspent."""
    scope = client.still_registered(code.scope)
    if not scope:
        raise InvalidScopeError("No scope of this consent is left to this client.")
    return replace(code, scope=scope)


def _sent_to_registered(code: codes.PresentedCode, client: Client) -> bool:
    """Whether the URI the code was sent to is still one of the client's redirect URIs."""
    # Checked even when the request left redirect_uri out, relying on the client's only one.
    sent_to = code.sent_to or code.redirect_uri  # a code stored before sent_to was kept
    return sent_to is None or client.check_redirect_uri(sent_to)


def reuse_detected(client_id: str, family_id: str | None) -> None:
    """A spent code was presented again: revoke every token it issued (RFC 6749 §4.1.2)."""
    if family_id is not None:
        revoking.revoke_family(family_id)
    audit.event("code.reuse_detected", client_id=client_id, family_id=family_id)


def spent_meanwhile(client_id: str, code_hash: str) -> None:
    """Another exchange spent the code after this one looked it up: this one is a replay."""
    reuse_detected(client_id, codes.replayed(code_hash).family_id)


class S256Challenge(CodeChallenge):
    """PKCE for every client, S256 only (RFC 9700 §2.1.1: `plain` adds nothing over TLS)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        # Authlib lets a request without a challenge through; ours is required of everyone.
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("'code_challenge' is required (PKCE, S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


def _id_token_key() -> RSAKey:
    """The key of this request's id_token. Authlib asks for its header's kid and for the key it
    signs with in two calls, and the ring may move on to a new key between them."""
    if "id_token_key" not in g:
        g.id_token_key = current_keyring().signing_key()
    key: RSAKey = g.id_token_key
    return key


class _IdTokenClaims:
    """What our id_tokens say and how they are signed: RS256 with the access tokens' key."""

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return _id_token_key()

    def get_client_algorithm(self, client: Client) -> str:
        return ALGORITHM

    def get_encode_header(self, client: Client) -> dict[str, Any]:
        # The kid lets a relying party pick the key from our JWKS; typ tells it from an at+jwt.
        return {"alg": ALGORITHM, "kid": _id_token_key().kid, "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        settings = current_settings()
        return {
            "iss": settings.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + settings.access_token_ttl,
        }

    def generate_user_info(self, user: Subject | SignedIn, scope: str) -> UserInfo:
        return user_info(user.user if isinstance(user, SignedIn) else user, scope)


class IdToken(_IdTokenClaims, OpenIDCode):
    """OpenID Connect Core §3.1.3.6: the id_token of the code grant, with the session's sid."""

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # a nonce is bound to one single-use code, so it cannot be replayed

    def get_authorization_code_claims(
        self, authorization_code: codes.PresentedCode
    ) -> dict[str, Any]:
        claims: dict[str, Any] = super().get_authorization_code_claims(authorization_code)
        # OpenID Connect Front-Channel Logout §3: sid names the browser session signed in.
        return {**claims, "sid": authorization_code.session_id}


class RefreshIdToken(_IdTokenClaims, OpenIDToken):
    """OpenID Connect Core §12.2: a refresh with `openid` returns a new id_token too."""

    def get_compatible_claims(self, request: Any) -> dict[str, Any]:
        claims: dict[str, Any] = super().get_compatible_claims(request)
        # Authlib's auth_time is the refresh's; §12.2 says the original sign-in's. A login
        # whose sign-in is unknown (stored before we kept it) says none rather than a wrong one.
        del claims["auth_time"]
        login: RefreshCredential = request.refresh_token
        if login.auth_time is not None:
            claims["auth_time"] = int(login.auth_time.timestamp())
        if login.session_id is not None:
            claims["sid"] = login.session_id  # the browser session the login was signed in with
        return claims


def user_info(user: Subject, scope: str) -> UserInfo:
    """The claims about a user that `scope` allows: sub, and preferred_username with profile."""
    info = UserInfo(sub=str(user.id))
    if "profile" in scope.split():
        info["preferred_username"] = user.username
    return info
