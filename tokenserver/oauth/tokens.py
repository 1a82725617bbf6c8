"""RFC 9068 JWT access tokens and the records kept for every issued token."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jws, jwt
from joserfc.jwk import KeySet
from sqlalchemy import and_, select, update

from ..digests import digest, new_secret
from ..extensions import db
from ..keys import ALGORITHM, KeyRing
from ..models import Client, TokenFamily, TokenRecord, User, utcnow

ACCESS = "access"
REFRESH = "refresh"


class TokenGenerator(JWTBearerTokenGenerator):
    """Signs access tokens with the current key and makes opaque refresh tokens."""

    def __init__(self, issuer: str, audience: str, access_ttl: int, keyring: KeyRing) -> None:
        # Authlib defaults to 10-day tokens and ignores OAUTH2_TOKEN_EXPIRES_IN; we pass our TTL.
        super().__init__(
            issuer,
            alg=ALGORITHM,
            refresh_token_generator=_new_refresh_token,
            expires_generator=access_ttl,
        )
        self.audience = audience
        self.keyring = keyring

    def get_jwks(self) -> KeySet:
        # One key in the set: joserfc signs with it and writes its `kid` into the header.
        return self.keyring.key_set()

    def get_audiences(self, client: Client, user: User | None, scope: str) -> str:
        return self.audience

    def get_jti(self, client: Client, grant_type: str, user: User | None, scope: str) -> str:
        return secrets.token_urlsafe(18)

    def get_extra_claims(
        self, client: Client, grant_type: str, user: User | None, scope: str
    ) -> dict[str, Any]:
        return {"username": user.username} if user is not None else {}


def _new_refresh_token(**_: Any) -> str:
    return new_secret(32)


def unverified_claims(access_token: str) -> dict[str, Any]:
    """The claims of a token this process has just signed (so needs no verification)."""
    claims: dict[str, Any] = json.loads(jws.extract_compact(access_token.encode()).payload)
    return claims


def verify_access_token(token: str, keyring: KeyRing) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token whose signature is ours; raises JoseError or ValueError.

    Only RS256 is accepted: `alg: none` and HS256-with-our-public-key (key confusion) fail here.
    """
    header = jws.extract_compact(token.encode()).protected
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str):
        raise ValueError("unexpected algorithm or missing kid")
    key = keyring.verification_key(kid)
    if key is None:
        raise ValueError("unknown kid")
    decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
    return dict(decoded.header), dict(decoded.claims)


@dataclass(frozen=True)
class RefreshCredential:
    """A refresh token that has just been spent, as the refresh grant sees it."""

    family_id: str
    client_id: str
    user_id: int | None
    scope: str

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


def record_issued(
    token: dict[str, Any],
    client: Client,
    user: User | None,
    refresh_ttl: int,
    parent: RefreshCredential | None = None,
) -> None:
    """Store the records of a token response: its access token and any refresh token."""
    claims = unverified_claims(token["access_token"])
    issued = datetime.fromtimestamp(claims["iat"], utcnow().tzinfo)
    if parent is None:
        family_id = secrets.token_hex(16)
        db.session.add(
            TokenFamily(
                id=family_id,
                client_id=client.client_id,
                user_id=user.id if user else None,
                created_at=issued,
            )
        )
    else:
        family_id = parent.family_id
    db.session.add(
        TokenRecord(
            family_id=family_id,
            kind=ACCESS,
            jti=claims["jti"],
            scope=claims["scope"],
            issued_at=issued,
            expires_at=datetime.fromtimestamp(claims["exp"], issued.tzinfo),
        )
    )
    if "refresh_token" in token:
        # RFC 6749 §6: a rotated refresh token keeps the scope of the one it replaces.
        scope = parent.scope if parent is not None else claims["scope"]
        db.session.add(
            TokenRecord(
                family_id=family_id,
                kind=REFRESH,
                token_hash=digest(token["refresh_token"]),
                scope=scope,
                issued_at=issued,
                expires_at=issued + timedelta(seconds=refresh_ttl),
            )
        )
    db.session.commit()


def spend_refresh_token(token: str, client: Client) -> RefreshCredential | None:
    """Atomically mark a live refresh token spent; a second use kills its family.

    One conditional UPDATE decides the winner, so concurrent refreshes with the same token
    cannot both succeed (RFC 9700 §4.14.2: rotation with reuse detection).
    """
    now = utcnow()
    token_hash = digest(token)
    live_family = select(TokenFamily.id).where(
        TokenFamily.client_id == client.client_id, TokenFamily.revoked_at.is_(None)
    )
    spent = db.session.execute(
        update(TokenRecord)
        .where(
            TokenRecord.token_hash == token_hash,
            TokenRecord.kind == REFRESH,
            TokenRecord.spent_at.is_(None),
            TokenRecord.revoked_at.is_(None),
            TokenRecord.expires_at > now,
            TokenRecord.family_id.in_(live_family),
        )
        .values(spent_at=now)
        .execution_options(synchronize_session=False)
    )
    row = db.session.execute(
        select(
            TokenRecord.family_id,
            TokenRecord.scope,
            TokenRecord.spent_at,
            TokenFamily.client_id,
            TokenFamily.user_id,
        )
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .where(TokenRecord.token_hash == token_hash, TokenRecord.kind == REFRESH)
    ).first()
    if row is None or row.client_id != client.client_id:
        return None
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        if row.spent_at is not None:
            revoke_family(row.family_id)  # replay of a spent token: assume it was stolen
        return None
    return RefreshCredential(row.family_id, row.client_id, row.user_id, row.scope)


def revoke_family(family_id: str) -> None:
    """Revoke a login's every token, now and for good."""
    db.session.execute(
        update(TokenFamily)
        .where(TokenFamily.id == family_id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    db.session.commit()


def revoke_access_token(jti: str) -> None:
    """Revoke one access token."""
    db.session.execute(
        update(TokenRecord)
        .where(TokenRecord.jti == jti, TokenRecord.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    db.session.commit()


@dataclass(frozen=True)
class LiveToken:
    """A token that verified and is alive right now, with what introspection reports."""

    kind: str
    family_id: str
    client_id: str
    user: User | None
    scope: str
    issued_at: int
    expires_at: int
    jti: str | None = None
    audience: str | None = None


def live_access_token(claims: dict[str, Any]) -> LiveToken | None:
    """The access token's record if it is unrevoked and its user still active, else None."""
    row = db.session.execute(
        select(TokenRecord.family_id, TokenFamily.client_id, User)
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .outerjoin(User, User.id == TokenFamily.user_id)
        .where(
            TokenRecord.jti == claims["jti"],
            TokenRecord.kind == ACCESS,
            TokenRecord.revoked_at.is_(None),
            TokenFamily.revoked_at.is_(None),
        )
    ).first()
    if row is None or not _user_active(row.User, claims):
        return None
    return LiveToken(
        ACCESS,
        row.family_id,
        row.client_id,
        row.User,
        claims.get("scope", ""),
        claims["iat"],
        claims["exp"],
        claims["jti"],
        claims.get("aud"),
    )


def _user_active(user: User | None, claims: dict[str, Any]) -> bool:
    if claims.get("sub") == claims.get("client_id") and user is None:
        return True  # a client-credentials token: there is no user to check
    return user is not None and not user.disabled and str(user.id) == claims.get("sub")


def live_refresh_token(token: str) -> LiveToken | None:
    """The refresh token's record if it is unspent, unrevoked, unexpired and its user active."""
    now = utcnow()
    row = db.session.execute(
        select(TokenRecord, TokenFamily.client_id, User)
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .outerjoin(User, User.id == TokenFamily.user_id)
        .where(
            and_(
                TokenRecord.token_hash == digest(token),
                TokenRecord.kind == REFRESH,
                TokenRecord.spent_at.is_(None),
                TokenRecord.revoked_at.is_(None),
                TokenRecord.expires_at > now,
                TokenFamily.revoked_at.is_(None),
            )
        )
    ).first()
    if row is None or row.User is None or row.User.disabled:
        return None
    record: TokenRecord = row.TokenRecord
    return LiveToken(
        REFRESH,
        record.family_id,
        row.client_id,
        row.User,
        record.scope,
        int(record.issued_at.timestamp()),
        int(record.expires_at.timestamp()),
    )


def is_jwt_shaped(token: str) -> bool:
    """Whether a presented token looks like one of our JWTs (three dot-separated parts)."""
    return token.count(".") == 2
