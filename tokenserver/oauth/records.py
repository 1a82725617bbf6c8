"""The records kept for every issued token: families, spending, revocation, liveness."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError
from joserfc import jws
from sqlalchemy import Connection, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .. import audit
from ..config import current_settings
from ..digests import digest
from ..extensions import db, reader
from ..models import (
    USER_COLUMNS,
    Client,
    SigningKey,
    Subject,
    TokenFamily,
    TokenRecord,
    User,
    UTCDateTime,
    utcnow,
)
from ..store import codes, replay, tokens
from .resources import as_audience

ACCESS = "access"
REFRESH = "refresh"
# Refresh tokens are 43 characters; a much longer string cannot be one of ours.
_MAX_REFRESH_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class RefreshCredential:
    """A live refresh token being exchanged, as the refresh grant sees it."""

    family_id: str
    client_id: str
    user: Subject | None
    scope: str
    token_hash: str
    session_ends_at: datetime  # the login's absolute end (TOKENSERVER_SESSION_MAX_AGE)
    # Spent a moment ago, and presented again within TOKENSERVER_REFRESH_REUSE_GRACE.
    within_grace: bool = False
    resources: tuple[str, ...] = ()  # the login's RFC 8707 resources
    dpop_jkt: str | None = None  # the DPoP key the login is bound to (RFC 9449 §5)

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


def _may_be_ours(refresh_token: str) -> bool:
    # Ours are short URL-safe ASCII; anything else (even a lone surrogate) cannot match a digest.
    return refresh_token.isascii() and len(refresh_token) <= _MAX_REFRESH_TOKEN_LENGTH


# The statements of the token grants and the bearer check are Core, built once, on the tables:
# they run on every request, and composing a statement, or loading and tracking ORM objects,
# costs more than executing it (statement caching skips compilation, not construction).
_records: Table = TokenRecord.__table__
_families: Table = TokenFamily.__table__
_users: Table = User.__table__
_keys: Table = SigningKey.__table__
_now = bindparam("now", type_=UTCDateTime())
_INSERT_RECORDS = insert(_records)
# A new login's family is stored only while its user is still enabled, in one statement: a
# login racing `users disable` either lands first (and is revoked with the rest) or not at all.
_INSERT_USER_FAMILY = (
    insert(_families)
    .from_select(
        ["id", "client_id", "user_id", "created_at", "resources", "dpop_jkt"],
        select(
            bindparam("family_id", type_=_families.c.id.type),
            bindparam("client_id", type_=_families.c.client_id.type),
            _users.c.id,
            bindparam("created_at", type_=UTCDateTime()),
            bindparam("resources", type_=_families.c.resources.type),
            bindparam("dpop_jkt", type_=_families.c.dpop_jkt.type),
        ).where(_users.c.id == bindparam("user_id"), _users.c.disabled.is_(False)),
    )
    .returning(_families.c.id)
)  # psycopg reports no rowcount for INSERT ... SELECT
_INSERT_CLIENT_FAMILY = insert(_families)


def _subject(row: Any) -> Subject | None:
    """The user of a row ending in the user columns (outer-joined: None when there is none)."""
    return None if row.id is None else Subject.from_row(row)


def record_issued(
    token: dict[str, Any],
    claims: dict[str, Any],
    client: Client,
    user: User | Subject | None,
    refresh_ttl: int,
    parent: RefreshCredential | None = None,
    *,
    session_max_age: int | None = None,
    resources: list[str] | None = None,
    code_hash: str | None = None,
    dpop_jkt: str | None = None,
) -> str:
    """Store a token response's records (its access token, any refresh token); its family id.

    A `parent` refresh token, or the authorization code (`code_hash`) being exchanged, is
    spent in the same transaction: both happen or neither does, in one commit.
    The transaction is a Core one of its own, short and outside the ORM session, which a token
    grant has no other use for. A refresh token never outlives its login's session
    (`session_max_age` from the login; the app's setting when not given). A new login keeps
    the RFC 8707 `resources` it was granted, the bound on what its refreshes may ask for,
    and the DPoP key (`dpop_jkt`) its refresh tokens are bound to, if any.
    """
    if session_max_age is None:
        session_max_age = current_settings().session_max_age
    issued = datetime.fromtimestamp(claims["iat"], UTC)
    family_id = parent.family_id if parent is not None else secrets.token_hex(16)
    session_ends = parent.session_ends_at if parent else issued + timedelta(seconds=session_max_age)
    records = [
        {
            "family_id": family_id,
            "kind": ACCESS,
            "jti": claims["jti"],
            "kid": signing_kid(token["access_token"]),
            "token_hash": None,
            "scope": claims["scope"],
            "issued_at": issued,
            "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
        }
    ]
    if "refresh_token" in token:
        records.append(
            {
                "family_id": family_id,
                "kind": REFRESH,
                "jti": None,
                "kid": None,
                "token_hash": digest(token["refresh_token"]),  # never the token itself
                # RFC 6749 §6: a rotated refresh token keeps the scope of the one it replaces.
                "scope": parent.scope if parent is not None else claims["scope"],
                "issued_at": issued,
                "expires_at": min(issued + timedelta(seconds=refresh_ttl), session_ends),
            }
        )
    code_spent = True
    try:
        with db.engine.begin() as conn:
            replay.spend_pending(conn)  # the request's client assertion and DPoP proof ids
            if code_hash is not None:
                code_spent = codes.spend(conn, code_hash, family_id)
            stored = code_spent and (
                _spend(conn, parent)
                if parent
                else _insert_family(
                    conn, family_id, client, user, issued, resources or [], dpop_jkt
                )
            )
            if stored:
                conn.execute(_INSERT_RECORDS, records)
            else:
                conn.rollback()
        if stored:
            replay.settled()
    except IntegrityError:
        # The client was deleted since it authenticated (another worker's copy may lag a second).
        raise InvalidClientError() from None
    if not code_spent:
        raise CodeSpentMeanwhile()
    if parent is not None and not stored:
        _reuse_detected(client, parent.family_id)
        raise InvalidGrantError("The refresh token is invalid, expired or spent.")
    if not stored:
        # Disabled while signing in; said as for any refused sign-in (no account-state oracle).
        raise InvalidGrantError("The grant is invalid, expired or revoked.")
    return family_id


class CodeSpentMeanwhile(InvalidGrantError):
    """Another request spent the authorization code between its lookup and this exchange."""

    def __init__(self) -> None:
        super().__init__("The grant is invalid, expired or revoked.")


def _insert_family(
    conn: Connection,
    family_id: str,
    client: Client,
    user: User | Subject | None,
    issued: datetime,
    resources: list[str],
    dpop_jkt: str | None,
) -> bool:
    """Store a new login's family; False if its user was disabled meanwhile."""
    family = {
        "family_id": family_id,
        "client_id": client.client_id,
        "created_at": issued,
        "resources": " ".join(resources),
        "dpop_jkt": dpop_jkt,
    }
    if user is None:
        conn.execute(
            _INSERT_CLIENT_FAMILY,
            {
                "id": family_id,
                "client_id": client.client_id,
                "created_at": issued,
                "resources": family["resources"],
                "dpop_jkt": dpop_jkt,
            },
        )
        return True
    return conn.execute(_INSERT_USER_FAMILY, family | {"user_id": user.id}).first() is not None


def signing_kid(access_token: str) -> str | None:
    """The `kid` in the header of a token we have just signed."""
    kid = jws.extract_compact(access_token.encode()).headers().get("kid")
    return kid if isinstance(kid, str) else None


def _typed(column: Any) -> Any:
    """A parameter typed as `column`, for the select list of an INSERT ... SELECT."""
    return bindparam(column.name, type_=column.type)


# An exchanged token joins its subject's family only while that login is alive and its user
# enabled, in one statement: an exchange racing a revocation lands first (and dies with the
# rest) or not at all.
_EXCHANGED_COLUMNS = ("jti", "kid", "scope", "issued_at", "expires_at", "client_id", "audience")
_INSERT_EXCHANGED = (
    insert(_records)
    .from_select(
        ["family_id", "kind", *_EXCHANGED_COLUMNS],
        select(
            _families.c.id,
            bindparam("kind", type_=_records.c.kind.type),
            *(_typed(_records.c[name]) for name in _EXCHANGED_COLUMNS),
        )
        .join(_users, _users.c.id == _families.c.user_id)
        .where(
            _families.c.id == bindparam("family_id"),
            _families.c.revoked_at.is_(None),
            _users.c.disabled.is_(False),
        ),
    )
    .returning(_records.c.id)
)


def record_exchanged(
    access_token: str, claims: dict[str, Any], family_id: str, client: Client
) -> None:
    """Store a token exchanged (RFC 8693) for one in `family_id`, as `client`'s, in that family.

    Revoking the login, or disabling its user, then kills the exchanged token with the rest.
    """
    auds = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    record = {
        "family_id": family_id,
        "kind": ACCESS,
        "jti": claims["jti"],
        "kid": signing_kid(access_token),
        "scope": claims["scope"],
        "issued_at": datetime.fromtimestamp(claims["iat"], UTC),
        "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
        "client_id": client.client_id,
        "audience": " ".join(auds),
    }
    try:
        with db.engine.begin() as conn:
            replay.spend_pending(conn)  # the request's client assertion and DPoP proof ids
            stored = conn.execute(_INSERT_EXCHANGED, record).first() is not None
            if not stored:
                conn.rollback()
        if stored:
            replay.settled()
    except IntegrityError:
        raise InvalidClientError() from None  # the client was deleted since it authenticated
    if not stored:
        raise InvalidGrantError("The subject token is invalid, expired or revoked.")


_REFRESH_BY_HASH = (
    select(
        _records.c.family_id,
        _records.c.scope,
        _records.c.spent_at,
        _records.c.revoked_at,
        _records.c.expires_at,
        _families.c.client_id,
        _families.c.revoked_at.label("family_revoked_at"),
        _families.c.created_at.label("family_created_at"),
        _families.c.resources,
        _families.c.dpop_jkt,
        *USER_COLUMNS,
    )
    .join(_families, _families.c.id == _records.c.family_id)
    .outerjoin(_users, _users.c.id == _families.c.user_id)
    .where(_records.c.token_hash == bindparam("token_hash"), _records.c.kind == REFRESH)
)


def find_refresh_token(token: str, client: Client) -> RefreshCredential | None:
    """The live, unspent refresh token of `client`; presenting a spent one kills its family.

    Only reads: the token is spent when the new tokens are stored (see record_issued), so the
    write lock is held for the few statements of that commit, not across RSA signing. A token
    spent less than TOKENSERVER_REFRESH_REUSE_GRACE ago passes too (two tabs racing).
    """
    if not _may_be_ours(token):
        return None
    token_hash = digest(token)
    row = reader().execute(_REFRESH_BY_HASH, {"token_hash": token_hash}).first()
    if row is None:
        return None
    if row.client_id != client.client_id:
        # Another client's token: nothing to learn, nothing to revoke, but worth a line.
        audit.event(
            "token.wrong_client",
            client_id=client.client_id,
            owner_client_id=row.client_id,
            family_id=row.family_id,
        )
        return None
    settings, now = current_settings(), utcnow()
    session_ends = row.family_created_at + timedelta(seconds=settings.session_max_age)
    grace = _within_grace(row.spent_at, settings.refresh_reuse_grace, now)
    if row.spent_at is not None and not grace:
        _reuse_detected(client, row.family_id)
        return None
    if row.revoked_at or row.family_revoked_at or min(row.expires_at, session_ends) <= now:
        return None
    return RefreshCredential(
        row.family_id,
        row.client_id,
        _subject(row),
        row.scope,
        token_hash,
        session_ends,
        grace,
        tuple(row.resources.split()),
        row.dpop_jkt,
    )


def _within_grace(spent_at: datetime | None, grace: int, now: datetime) -> bool:
    """Whether a spent refresh token was spent less than `grace` seconds ago."""
    return spent_at is not None and grace > 0 and now - spent_at < timedelta(seconds=grace)


_SPEND = (
    update(_records)
    .where(
        _records.c.token_hash == bindparam("spent_hash"),  # a column's name is reserved here
        _records.c.kind == REFRESH,
        _records.c.spent_at.is_(None),
        _records.c.revoked_at.is_(None),
        _records.c.expires_at > _now,
    )
    .values(spent_at=_now)
)
# The grace case: still spent less than the grace ago, decided by the same kind of conditional
# UPDATE (it rewrites spent_at unchanged, taking the row's lock), so a reuse racing the end of
# the grace, or a revocation, is judged once.
_SPEND_AGAIN = (
    update(_records)
    .where(
        _records.c.token_hash == bindparam("spent_hash"),
        _records.c.kind == REFRESH,
        _records.c.spent_at > bindparam("grace_start", type_=UTCDateTime()),
        _records.c.revoked_at.is_(None),
        _records.c.expires_at > _now,
    )
    .values(spent_at=_records.c.spent_at)
)


def _spend(conn: Connection, parent: RefreshCredential) -> bool:
    """Mark `parent` spent; False if it no longer could be. One conditional UPDATE decides.

    Concurrent refreshes with the same token cannot both pass (RFC 9700 §4.14.2): the loser's
    UPDATE matches no row once the winner's is in, and the loser presented a spent token,
    unless it came within the reuse grace.
    """
    now = utcnow()
    spent = conn.execute(_SPEND, {"spent_hash": parent.token_hash, "now": now})
    if spent.rowcount == 1:
        return True
    grace = current_settings().refresh_reuse_grace
    if grace <= 0:
        return False
    params = {
        "spent_hash": parent.token_hash,
        "now": now,
        "grace_start": now - timedelta(seconds=grace),
    }
    return bool(conn.execute(_SPEND_AGAIN, params).rowcount == 1)


def _reuse_detected(client: Client, family_id: str) -> None:
    tokens.revoke_family(family_id)  # replay of a spent token: assume it was stolen
    audit.event("token.reuse_detected", client_id=client.client_id, family_id=family_id)


@dataclass(frozen=True)
class LiveToken:
    """A token that verified and is alive right now, with what introspection reports."""

    kind: str
    family_id: str
    client_id: str
    user: Subject | None
    scope: str
    issued_at: int
    expires_at: int
    jti: str | None = None
    audience: str | list[str] | None = None
    act: dict[str, Any] | None = None  # RFC 8693 §4.1: who acts for the subject
    dpop_jkt: str | None = None  # RFC 9449: the key the token is bound to (`cnf.jkt`)


_LIVE_ACCESS = (
    select(
        _records.c.family_id,
        _families.c.client_id,
        _families.c.resources,
        # An exchanged token's own client and audience (RFC 8693); None for the family's.
        _records.c.client_id.label("issued_to"),
        _records.c.audience,
        *USER_COLUMNS,
    )
    .join(_families, _families.c.id == _records.c.family_id)
    .outerjoin(_users, _users.c.id == _families.c.user_id)
    # `keys revoke`: a token signed by a revoked key dies at once on every worker, even one
    # whose cached key set still verifies it.
    .outerjoin(_keys, and_(_keys.c.kid == _records.c.kid, _keys.c.state == "revoked"))
    .where(
        _records.c.jti == bindparam("jti"),
        _records.c.kind == ACCESS,
        _records.c.revoked_at.is_(None),
        _families.c.revoked_at.is_(None),
        _keys.c.kid.is_(None),
    )
)


def live_access_token(claims: dict[str, Any]) -> LiveToken | None:
    """A verified access token's record if it is unrevoked and its user still active."""
    row = reader().execute(_LIVE_ACCESS, {"jti": claims["jti"]}).first()
    if row is None:
        return None
    user = _subject(row)
    if not _subject_active(user, row.client_id, claims):
        return None
    granted = row.resources if row.audience is None else row.audience
    if not _aud_granted(claims["aud"], granted.split()):
        return None
    return LiveToken(
        ACCESS,
        row.family_id,
        row.issued_to or row.client_id,
        user,
        claims["scope"],
        claims["iat"],
        claims["exp"],
        claims["jti"],
        claims["aud"],
        claims.get("act"),
        bound_jkt(claims),
    )


def bound_jkt(claims: dict[str, Any]) -> str | None:
    """The DPoP key thumbprint an access token of ours is bound to (`cnf.jkt`), if any."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


def _aud_granted(aud: Any, resources: list[str]) -> bool:
    """Whether `aud` is what this login could be issued: its RFC 8707 resources (or some of
    them, after a narrowing refresh), else the default audience."""
    granted = resources or [current_settings().audience]
    auds = aud if isinstance(aud, list) else [aud]
    return bool(auds) and all(value in granted for value in auds)


def _subject_active(user: Subject | None, client_id: str, claims: dict[str, Any]) -> bool:
    if user is None:
        # Only a client-credentials token has no user, and its subject is the client itself.
        return claims["sub"] == client_id
    # A disabled user's tokens die at once, whatever their expiry says.
    return not user.disabled and str(user.id) == claims["sub"]


_LIVE_REFRESH = (
    select(
        _records.c.family_id,
        _records.c.scope,
        _records.c.issued_at,
        _records.c.expires_at,
        _families.c.client_id,
        _families.c.resources,
        _families.c.dpop_jkt,
        *USER_COLUMNS,
    )
    .join(_families, _families.c.id == _records.c.family_id)
    .join(_users, _users.c.id == _families.c.user_id)
    .where(
        _records.c.token_hash == bindparam("token_hash"),
        _records.c.kind == REFRESH,
        _records.c.spent_at.is_(None),
        _records.c.revoked_at.is_(None),
        _records.c.expires_at > _now,
        _families.c.revoked_at.is_(None),
        _families.c.created_at > bindparam("session_start", type_=UTCDateTime()),
        _users.c.disabled.is_(False),
    )
)


def live_refresh_token(token: str) -> LiveToken | None:
    """The refresh token's record if it is unspent, unrevoked, unexpired and its user active."""
    if not _may_be_ours(token):
        return None
    now = utcnow()
    session_start = now - timedelta(seconds=current_settings().session_max_age)
    params = {"token_hash": digest(token), "now": now, "session_start": session_start}
    row = reader().execute(_LIVE_REFRESH, params).first()
    if row is None:
        return None
    return LiveToken(
        REFRESH,
        row.family_id,
        row.client_id,
        _subject(row),
        row.scope,
        int(row.issued_at.timestamp()),
        int(row.expires_at.timestamp()),
        audience=as_audience(row.resources.split()),
        dpop_jkt=row.dpop_jkt,
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
        select(
            TokenRecord.family_id,
            TokenRecord.jti,
            # An exchanged token is its exchanging client's to revoke, not the login's client's.
            func.coalesce(TokenRecord.client_id, TokenFamily.client_id).label("client_id"),
        )
        .join(TokenFamily, TokenFamily.id == TokenRecord.family_id)
        .where(condition, TokenRecord.kind == kind)
    ).first()
    return StoredToken(kind, row.family_id, row.client_id, row.jti) if row else None
