"""The records kept for every issued token: families, spending, revocation, liveness."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidGrantError
from sqlalchemy import bindparam, select, update

from .. import audit
from ..digests import digest
from ..extensions import db
from ..models import Client, TokenFamily, TokenRecord, User, utcnow

ACCESS = "access"
REFRESH = "refresh"
# Refresh tokens are 43 characters; a much longer string cannot be one of ours.
_MAX_REFRESH_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class RefreshCredential:
    """A live refresh token being exchanged, as the refresh grant sees it."""

    family_id: str
    client_id: str
    user_id: int | None
    scope: str
    token_hash: str

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


def _may_be_ours(refresh_token: str) -> bool:
    # Ours are short URL-safe ASCII; anything else (even a lone surrogate) cannot match a digest.
    return refresh_token.isascii() and len(refresh_token) <= _MAX_REFRESH_TOKEN_LENGTH


def record_issued(
    token: dict[str, Any],
    claims: dict[str, Any],
    client: Client,
    user: User | None,
    refresh_ttl: int,
    parent: RefreshCredential | None = None,
) -> str:
    """Store a token response's records (its access token, any refresh token); its family id.

    A `parent` refresh token is spent in the same transaction: both happen or neither does.
    """
    issued = datetime.fromtimestamp(claims["iat"], UTC)
    if parent is not None:
        _spend(parent, client)
    family_id = parent.family_id if parent is not None else _new_family(client, user, issued)
    db.session.add(
        TokenRecord(
            family_id=family_id,
            kind=ACCESS,
            jti=claims["jti"],
            scope=claims["scope"],
            issued_at=issued,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    )
    if "refresh_token" in token:
        # RFC 6749 §6: a rotated refresh token keeps the scope of the one it replaces.
        db.session.add(
            TokenRecord(
                family_id=family_id,
                kind=REFRESH,
                token_hash=digest(token["refresh_token"]),  # never the token itself
                scope=parent.scope if parent is not None else claims["scope"],
                issued_at=issued,
                expires_at=issued + timedelta(seconds=refresh_ttl),
            )
        )
    db.session.commit()
    return family_id


def _new_family(client: Client, user: User | None, issued: datetime) -> str:
    family_id = secrets.token_hex(16)
    db.session.add(
        TokenFamily(
            id=family_id,
            client_id=client.client_id,
            user_id=user.id if user else None,
            created_at=issued,
        )
    )
    return family_id


def find_refresh_token(token: str, client: Client) -> RefreshCredential | None:
    """The live, unspent refresh token of `client`; presenting a spent one kills its family.

    Only reads: the token is spent when the new tokens are stored (see record_issued), so the
    write lock is held for the few statements of that commit, not across RSA signing.
    """
    if not _may_be_ours(token):
        return None
    token_hash = digest(token)
    row = db.session.execute(_REFRESH_BY_HASH, {"token_hash": token_hash}).first()
    if row is None or row.TokenFamily.client_id != client.client_id:
        return None  # unknown, or another client's: nothing to learn, nothing to revoke
    if row.spent_at is not None:
        _reuse_detected(client, row.family_id)
        return None
    family: TokenFamily = row.TokenFamily
    if row.revoked_at or family.revoked_at or row.expires_at <= utcnow():
        return None
    return RefreshCredential(row.family_id, family.client_id, family.user_id, row.scope, token_hash)


_REFRESH_BY_HASH = (
    select(
        TokenRecord.family_id,
        TokenRecord.scope,
        TokenRecord.spent_at,
        TokenRecord.revoked_at,
        TokenRecord.expires_at,
        TokenFamily,
    )
    .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
    .where(TokenRecord.token_hash == bindparam("token_hash"), TokenRecord.kind == REFRESH)
)


def _spend(parent: RefreshCredential, client: Client) -> None:
    """Mark `parent` spent, or fail: one conditional UPDATE decides the winner.

    Concurrent refreshes with the same token cannot both pass (RFC 9700 §4.14.2): the loser's
    UPDATE matches no row once the winner's is in, and the loser presented a spent token.
    """
    now = utcnow()
    spent = db.session.execute(
        update(TokenRecord)
        .where(
            TokenRecord.token_hash == parent.token_hash,
            TokenRecord.kind == REFRESH,
            TokenRecord.spent_at.is_(None),
            TokenRecord.revoked_at.is_(None),
            TokenRecord.expires_at > now,
        )
        .values(spent_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        _reuse_detected(client, parent.family_id)
        raise InvalidGrantError("The refresh token is invalid, expired or spent.")


def _reuse_detected(client: Client, family_id: str) -> None:
    revoke_family(family_id)  # replay of a spent token: assume it was stolen
    audit.event("token.reuse_detected", client_id=client.client_id, family_id=family_id)


def revoke_family(family_id: str) -> None:
    """Revoke every token of one login, now and for good (committed at once)."""
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
    audience: str | list[str] | None = None


# Built once: this runs on every bearer request, and composing a select costs more than
# executing it (statement caching skips compilation, not construction).
_LIVE_ACCESS = (
    select(TokenRecord.family_id, TokenFamily.client_id, User)
    .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
    .outerjoin(User, User.id == TokenFamily.user_id)
    .where(
        TokenRecord.jti == bindparam("jti"),
        TokenRecord.kind == ACCESS,
        TokenRecord.revoked_at.is_(None),
        TokenFamily.revoked_at.is_(None),
    )
)


def live_access_token(claims: dict[str, Any]) -> LiveToken | None:
    """A verified access token's record if it is unrevoked and its user still active."""
    row = db.session.execute(_LIVE_ACCESS, {"jti": claims["jti"]}).first()
    if row is None or not _subject_active(row.User, row.client_id, claims):
        return None
    return LiveToken(
        ACCESS,
        row.family_id,
        row.client_id,
        row.User,
        claims["scope"],
        claims["iat"],
        claims["exp"],
        claims["jti"],
        claims["aud"],
    )


def _subject_active(user: User | None, client_id: str, claims: dict[str, Any]) -> bool:
    if user is None:
        # Only a client-credentials token has no user, and its subject is the client itself.
        return claims["sub"] == client_id
    # A disabled user's tokens die at once, whatever their expiry says.
    return not user.disabled and str(user.id) == claims["sub"]


def live_refresh_token(token: str) -> LiveToken | None:
    """The refresh token's record if it is unspent, unrevoked, unexpired and its user active."""
    if not _may_be_ours(token):
        return None
    row = db.session.execute(
        select(TokenRecord, TokenFamily.client_id, User)
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .join(User, User.id == TokenFamily.user_id)
        .where(
            TokenRecord.token_hash == digest(token),
            TokenRecord.kind == REFRESH,
            TokenRecord.spent_at.is_(None),
            TokenRecord.revoked_at.is_(None),
            TokenRecord.expires_at > utcnow(),
            TokenFamily.revoked_at.is_(None),
            User.disabled.is_(False),
        )
    ).first()
    if row is None:
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


@dataclass(frozen=True)
class StoredToken:
    """A token's record in whatever state, for revocation."""

    kind: str
    family_id: str
    client_id: str
    jti: str | None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id


def stored_access_token(jti: str) -> StoredToken | None:
    """The record of the access token with this `jti`, if any."""
    return _stored(TokenRecord.jti == jti, ACCESS)


def stored_refresh_token(token: str) -> StoredToken | None:
    """The record of this refresh token, if any."""
    if not _may_be_ours(token):
        return None
    return _stored(TokenRecord.token_hash == digest(token), REFRESH)


def _stored(condition: Any, kind: str) -> StoredToken | None:
    row = db.session.execute(
        select(TokenRecord.family_id, TokenRecord.jti, TokenFamily.client_id)
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .where(condition, TokenRecord.kind == kind)
    ).first()
    return StoredToken(kind, row.family_id, row.client_id, row.jti) if row else None
