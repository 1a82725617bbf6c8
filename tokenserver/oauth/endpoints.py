"""Introspection (RFC 7662) and revocation (RFC 7009) over our token records."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint
from flask import current_app
from joserfc.errors import JoseError

from ..digests import digest
from ..extensions import db
from ..keys import current_keyring
from ..models import Client, TokenRecord
from . import tokens

_CLIENT_AUTH = ["client_secret_basic", "client_secret_post"]


class TokenView:
    """A presented token as Authlib's endpoints ask about it."""

    def __init__(self, live: tokens.LiveToken) -> None:
        self.live = live

    def check_client(self, client: Client) -> bool:
        return self.live.client_id == client.client_id

    def is_expired(self) -> bool:
        return False  # only live tokens are turned into views

    def is_revoked(self) -> bool:
        return False


def find_live_token(token: str, hint: str | None = None) -> TokenView | None:
    """The live token behind a presented string, access or refresh, or None."""
    if tokens.is_jwt_shaped(token) and hint != "refresh_token":
        try:
            _header, claims = tokens.verify_access_token(token, current_keyring())
            _check_registered_claims(claims)
        except (JoseError, ValueError, KeyError, TypeError):
            return None
        live = tokens.live_access_token(claims)
    elif len(token) <= 512:
        live = tokens.live_refresh_token(token)
    else:
        return None
    return TokenView(live) if live else None


def _check_registered_claims(claims: dict[str, Any]) -> None:
    from .protect import claims_problem

    problem = claims_problem(claims)
    if problem:
        raise ValueError(problem)


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """Any client may ask about its own tokens; a resource server about any token."""

    CLIENT_AUTH_METHODS = _CLIENT_AUTH

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return find_live_token(token_string, token_type_hint)

    def check_permission(self, token: TokenView, client: Client, request: Any) -> bool:
        return client.can_introspect or token.check_client(client)

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        live = token.live
        settings = current_app.extensions["tokenserver.settings"]
        payload: dict[str, Any] = {
            "active": True,
            "scope": live.scope,
            "client_id": live.client_id,
            "sub": str(live.user.id) if live.user else live.client_id,
            "aud": live.audience or settings.audience,
            "iss": settings.issuer,
            "exp": live.expires_at,
            "iat": live.issued_at,
            "token_type": "Bearer" if live.kind == tokens.ACCESS else "refresh_token",
        }
        if live.user is not None:
            payload["username"] = live.user.username
        if live.jti:
            payload["jti"] = live.jti
        return payload


class RevocationEndpoint(_RevocationEndpoint):
    """Revoking a refresh token kills its family; an access token, just itself."""

    CLIENT_AUTH_METHODS = _CLIENT_AUTH + ["none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        if tokens.is_jwt_shaped(token_string):
            try:
                _header, claims = tokens.verify_access_token(token_string, current_keyring())
            except (JoseError, ValueError, KeyError, TypeError):
                return None
            return _RecordView.by_jti(claims.get("jti"))
        return _RecordView.by_hash(digest(token_string)) if len(token_string) <= 512 else None

    def authenticate_token(self, request: Any, client: Client) -> Any:
        # Authlib answers another client's token with invalid_grant, which confirms the token
        # exists; RFC 7009 §2.2 lets us treat it as unknown: 200 and nothing revoked.
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        return token if token is not None and token.check_client(client) else None

    def revoke_token(self, token: _RecordView, request: Any) -> None:
        if token.record.kind == tokens.REFRESH:
            tokens.revoke_family(token.record.family_id)
        elif token.record.jti:
            tokens.revoke_access_token(token.record.jti)


class _RecordView:
    """A stored token record, whatever its state, for revocation."""

    def __init__(self, record: TokenRecord, client_id: str) -> None:
        self.record = record
        self.client_id = client_id

    @classmethod
    def by_jti(cls, jti: object) -> _RecordView | None:
        return cls._first(TokenRecord.jti == jti) if isinstance(jti, str) else None

    @classmethod
    def by_hash(cls, token_hash: str) -> _RecordView | None:
        return cls._first(TokenRecord.token_hash == token_hash)

    @classmethod
    def _first(cls, condition: Any) -> _RecordView | None:
        from ..models import TokenFamily

        row = db.session.execute(
            db.select(TokenRecord, TokenFamily.client_id)
            .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
            .where(condition)
        ).first()
        return cls(row.TokenRecord, row.client_id) if row else None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id
