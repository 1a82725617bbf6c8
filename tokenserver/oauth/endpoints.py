"""Introspection (RFC 7662) and revocation (RFC 7009) over our token records."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from ..config import current_settings
from ..models import Client
from ..store.tokens import revoking
from . import records
from .tokens import TokenRejected, VerifiedToken, is_jwt_shaped, verified_token


def _verified_or_none(token: str) -> VerifiedToken | None:
    try:
        # Ours whatever its `aud`: resource servers introspect the tokens aimed at them.
        return verified_token(token, any_audience=True)
    except TokenRejected:
        return None


class TokenView:
    """A live token as Authlib's introspection endpoint asks about it."""

    def __init__(self, live: records.LiveToken) -> None:
        self.live = live

    def check_client(self, client: Client) -> bool:
        return self.live.client_id == client.client_id

    def is_expired(self) -> bool:
        return False  # only live tokens are turned into views

    def is_revoked(self) -> bool:
        return False


def find_live_token(token: str) -> TokenView | None:
    """The live token behind a presented string, access or refresh, or None.

    The type hint is not needed: a JWT is never a refresh token, and RFC 7662 §2.1 lets us
    search every type whatever the hint says.
    """
    if is_jwt_shaped(token):
        verified = _verified_or_none(token)
        live = records.live_access_token(verified.claims, verified.kid) if verified else None
    else:
        live = records.live_refresh_token(token)
    return TokenView(live) if live else None


def _require_token(request: Any) -> None:
    # Authlib refuses a token_type_hint it does not know; RFC 7009 §2.1 and RFC 7662 §2.1 let
    # the server ignore the hint, and we can tell the types apart without it.
    if "token" not in request.form:
        raise InvalidRequestError("'token' is required")


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """Any client may ask about its own tokens; a resource server about any token."""

    # Authlib allows only client_secret_basic; public clients (`none`) may not introspect.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def check_params(self, request: Any, client: Client) -> None:
        _require_token(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return find_live_token(token_string)

    def check_permission(self, token: TokenView, client: Client, request: Any) -> bool:
        # A token of another client reads as {"active": false}, exactly like an unknown one.
        return client.can_introspect or token.check_client(client)

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        live = token.live
        settings = current_settings()
        payload: dict[str, Any] = {
            "active": True,
            "scope": live.scope,
            "client_id": live.client_id,
            "sub": str(live.user.id) if live.user else live.client_id,
            "aud": live.audience or settings.audience,
            "iss": settings.issuer,
            "exp": live.expires_at,
            "iat": live.issued_at,
            "token_type": _token_type(live),
        }
        if live.dpop_jkt is not None:
            payload["cnf"] = {"jkt": live.dpop_jkt}  # RFC 9449 §6.2: the key it is bound to
        if live.user is not None:
            payload["username"] = live.user.username
        if live.jti:
            payload["jti"] = live.jti
        if live.act is not None:
            payload["act"] = live.act  # RFC 8693 §4.1 and §2.2: an exchanged token's actors
        return payload


def _token_type(live: records.LiveToken) -> str:
    if live.kind == records.REFRESH:
        return "refresh_token"
    return "DPoP" if live.dpop_jkt is not None else "Bearer"


class RevocationEndpoint(_RevocationEndpoint):
    """Revoking a refresh token kills its family; an access token, itself and what was
    exchanged from it (RFC 8693)."""

    # Authlib allows only client_secret_basic; public clients must be able to log out too.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

    def check_params(self, request: Any, client: Client) -> None:
        _require_token(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        if is_jwt_shaped(token_string):
            verified = _verified_or_none(token_string)
            if verified is None:
                return None
            return records.stored_access_token(verified.claims["jti"], verified.kid)
        return records.stored_refresh_token(token_string)

    def authenticate_token(self, request: Any, client: Client) -> Any:
        # Authlib answers another client's token with invalid_grant, which confirms the token
        # exists; RFC 7009 §2.2 lets us treat it as unknown: 200 and nothing revoked.
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        return token if token is not None and token.check_client(client) else None

    def revoke_token(self, token: records.StoredToken, request: Any) -> None:
        if token.kind == records.REFRESH:
            revoking.revoke_family(token.family_id)
        elif token.jti:
            revoking.revoke_access_token(token.jti)
