"""Lookups: a presented token's record and login, whether they are live, and the apps
holding a user's live tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, exists, func, select

from ...extensions import reader
from ...models import (
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
from . import ACCESS, REFRESH

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
_clients: Table = Client.__table__
_users: Table = User.__table__
_keys: Table = SigningKey.__table__
_now = bindparam("now", type_=UTCDateTime())


def _subject(row: Any) -> Subject | None:
    """The user of a row ending in the user columns (outer-joined: None when there is none)."""
    return None if row.id is None else Subject.from_row(row)


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A refresh token's record and its login, in whatever state."""

    family_id: str
    scope: str
    spent_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime
    client_id: str
    family_revoked_at: datetime | None
    family_created_at: datetime
    resources: str
    dpop_jkt: str | None
    auth_time: datetime | None  # the login's sign-in, if known
    session_id: str | None  # the login's browser session, if any
    user: Subject | None


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
        _families.c.auth_time,
        _families.c.session_id,
        *USER_COLUMNS,
    )
    .join(_families, _families.c.id == _records.c.family_id)
    .outerjoin(_users, _users.c.id == _families.c.user_id)
    .where(_records.c.token_hash == bindparam("token_hash"), _records.c.kind == REFRESH)
)


def refresh_record(token_hash: str) -> RefreshRecord | None:
    """The refresh token with this digest, spent, revoked or not."""
    row = reader().execute(_REFRESH_BY_HASH, {"token_hash": token_hash}).first()
    if row is None:
        return None
    return RefreshRecord(
        row.family_id,
        row.scope,
        row.spent_at,
        row.revoked_at,
        row.expires_at,
        row.client_id,
        row.family_revoked_at,
        row.family_created_at,
        row.resources,
        row.dpop_jkt,
        row.auth_time,
        row.session_id,
        _subject(row),
    )


@dataclass(frozen=True, slots=True)
class LiveAccess:
    """An unrevoked access token's record, in a live login, signed by an unrevoked key."""

    family_id: str
    client_id: str  # the login's client
    resources: str  # the login's RFC 8707 resources
    issued_to: str | None  # an exchanged token's own client (RFC 8693); None for the login's
    audience: str | None  # an exchanged token's own audience
    user: Subject | None


_LIVE_ACCESS = (
    select(
        _records.c.family_id,
        _families.c.client_id,
        _families.c.resources,
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
        # The presented token must be the one recorded: a jti borrowed from a live token, on
        # claims re-signed with another key we still hold, matches no record.
        _records.c.kid == bindparam("kid"),
        _records.c.scope == bindparam("scope"),
        _records.c.expires_at == bindparam("expires_at", type_=UTCDateTime()),
        _records.c.revoked_at.is_(None),
        _families.c.revoked_at.is_(None),
        _keys.c.kid.is_(None),
    )
)


def live_access(jti: str, kid: str, scope: str, expires_at: datetime) -> LiveAccess | None:
    """The access token with this `jti`, signed under `kid` with this scope and expiry, if it,
    its login and its signing key are unrevoked."""
    params = {"jti": jti, "kid": kid, "scope": scope, "expires_at": expires_at}
    row = reader().execute(_LIVE_ACCESS, params).first()
    if row is None:
        return None
    return LiveAccess(
        row.family_id, row.client_id, row.resources, row.issued_to, row.audience, _subject(row)
    )


@dataclass(frozen=True, slots=True)
class LiveRefresh:
    """An unspent, unrevoked, unexpired refresh token of a live login of an enabled user."""

    family_id: str
    scope: str
    issued_at: datetime
    expires_at: datetime
    client_id: str
    resources: str
    dpop_jkt: str | None
    user: Subject
    session_started_at: datetime  # when its login began, which ends with the session's age


_LIVE_REFRESH = (
    select(
        _records.c.family_id,
        _records.c.scope,
        _records.c.issued_at,
        _records.c.expires_at,
        _families.c.created_at.label("session_started_at"),
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


def live_refresh(token_hash: str, session_start: datetime) -> LiveRefresh | None:
    """The refresh token with this digest if live, in a login made after `session_start`."""
    params = {"token_hash": token_hash, "now": utcnow(), "session_start": session_start}
    row = reader().execute(_LIVE_REFRESH, params).first()
    if row is None:
        return None
    return LiveRefresh(
        row.family_id,
        row.scope,
        row.issued_at,
        row.expires_at,
        row.client_id,
        row.resources,
        row.dpop_jkt,
        Subject.from_row(row),
        row.session_started_at,
    )


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A token's record in whatever state, for revocation."""

    family_id: str
    client_id: str  # whose token it is to revoke
    jti: str | None


_STORED = select(
    _records.c.family_id,
    # An exchanged token is its exchanging client's to revoke, not the login's client's.
    func.coalesce(_records.c.client_id, _families.c.client_id).label("client_id"),
    _records.c.jti,
).join(_families, _families.c.id == _records.c.family_id)
# Of the very token presented: a jti re-signed under another key we hold matches nothing.
_STORED_ACCESS = _STORED.where(
    _records.c.jti == bindparam("jti"),
    _records.c.kind == ACCESS,
    _records.c.kid == bindparam("kid"),
)
_STORED_REFRESH = _STORED.where(
    _records.c.token_hash == bindparam("token_hash"), _records.c.kind == REFRESH
)


def stored_access(jti: str, kid: str) -> StoredRecord | None:
    """The record of the access token with this `jti`, signed under `kid`, if any."""
    row = reader().execute(_STORED_ACCESS, {"jti": jti, "kid": kid}).first()
    return None if row is None else StoredRecord(row.family_id, row.client_id, row.jti)


def stored_refresh(token_hash: str) -> StoredRecord | None:
    """The record of the refresh token with this digest, if any."""
    row = reader().execute(_STORED_REFRESH, {"token_hash": token_hash}).first()
    return None if row is None else StoredRecord(row.family_id, row.client_id, row.jti)


@dataclass(frozen=True)
class SignedInApp:
    """A client holding live tokens of the user."""

    client_id: str
    name: str
    since: datetime
    self_registered: bool  # registered over RFC 7591: its name is its own claim


def signed_in_apps(user_id: int) -> list[SignedInApp]:
    """Clients with a live token of the user, the app they signed in to first listed first."""
    live = exists().where(
        _records.c.family_id == _families.c.id,
        _records.c.revoked_at.is_(None),
        _records.c.spent_at.is_(None),
        _records.c.expires_at > utcnow(),
    )
    self_registered = Client.self_registered
    query = (
        select(
            _clients.c.client_id,
            _clients.c.name,
            func.min(_families.c.created_at),
            self_registered,
        )
        .join(_clients, _clients.c.client_id == _families.c.client_id)
        .where(_families.c.user_id == user_id, _families.c.revoked_at.is_(None), live)
        .group_by(_clients.c.client_id, _clients.c.name, self_registered)
        .order_by(func.min(_families.c.created_at))
    )
    return [
        SignedInApp(client_id, name, since, bool(registered))
        for client_id, name, since, registered in reader().execute(query)
    ]
