"""Tokens: logins (token families), the records of the tokens they issued, and revoking them.

The token grants and the bearer check run these statements on every request, so they are
Core, built once on the tables: composing a statement, or loading and tracking ORM objects,
costs more than executing it (statement caching skips compilation, not construction). The
rules they serve (rotation, reuse detection, liveness) are in oauth/records.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

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
from . import codes, delete_in_batches, devices, replay, sessions, transaction, typed_parameter

ACCESS = "access"
REFRESH = "refresh"

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
_clients: Table = Client.__table__
_users: Table = User.__table__
_keys: Table = SigningKey.__table__
_now = bindparam("now", type_=UTCDateTime())

_REVOKE_FAMILY = (
    update(_families)
    .where(_families.c.id == bindparam("family_id"), _families.c.revoked_at.is_(None))
    .values(revoked_at=_now)
)
_REVOKE_ACCESS = (
    update(_records)
    .where(_records.c.jti == bindparam("token_jti"), _records.c.revoked_at.is_(None))
    .values(revoked_at=_now)
)


@dataclass(frozen=True)
class SignedInApp:
    """A client holding live tokens of the user."""

    client_id: str
    name: str
    since: datetime
    self_registered: bool  # registered over RFC 7591: its name is its own claim


def revoke_family(family_id: str, tx: Connection | None = None) -> None:
    """Revoke every token of one login, now and for good."""
    with transaction(tx) as conn:
        conn.execute(_REVOKE_FAMILY, {"family_id": family_id, "now": utcnow()})


def revoke_logins(
    user_id: int,
    *,
    client_id: str | None = None,
    keep_family: str | None = None,
    tx: Connection | None = None,
) -> int:
    """Revoke a user's logins (of one client, or all; but `keep_family`); how many.

    Enabling the user again brings none of them back: their access and refresh tokens stay
    dead, and the user signs in anew.
    """
    condition = [_families.c.user_id == user_id]
    if client_id is not None:
        condition.append(_families.c.client_id == client_id)
    if keep_family is not None:
        condition.append(_families.c.id != keep_family)
    return _revoke_families(condition, tx)


def revoke_client_logins(client_id: str, tx: Connection | None = None) -> int:
    """Revoke every live login of one client, whoever's it is; how many."""
    return _revoke_families([_families.c.client_id == client_id], tx)


def _revoke_families(condition: list[ColumnElement[bool]], tx: Connection | None) -> int:
    """Revoke the live logins `condition` picks; how many."""
    live = _families.c.revoked_at.is_(None)
    with transaction(tx) as conn:
        result = conn.execute(update(_families).where(live, *condition).values(revoked_at=utcnow()))
    return int(result.rowcount)


def revoke_access_token(jti: str) -> None:
    """Revoke one access token, and every token exchanged from it (RFC 8693), transitively."""
    now = utcnow()
    with transaction() as conn:
        # First the token's own row: its lock waits out any exchange of it under way (which
        # share-locks it, see _INSERT_EXCHANGED), so what that exchange stores is seen below.
        conn.execute(_REVOKE_ACCESS, {"token_jti": jti, "now": now})
        _revoke_exchanged(conn, [jti], now)


# One generation of exchanged tokens: those exchanged from the given ones, not yet revoked.
_REVOKE_EXCHANGED = (
    update(_records)
    .where(
        _records.c.parent_jti.in_(bindparam("parent_jtis", expanding=True)),
        _records.c.revoked_at.is_(None),
    )
    .values(revoked_at=_now)
    .returning(_records.c.jti)
)


# The first generation exchanged from the tokens a signing key signed: found from the few
# exchanged records (the parent_jti index), each parent by its unique jti.
_signed = _records.alias("signed")
_REVOKE_EXCHANGED_FROM_KEY = (
    update(_records)
    .where(
        _records.c.parent_jti.is_not(None),
        _records.c.revoked_at.is_(None),
        exists().where(
            _signed.c.jti == _records.c.parent_jti, _signed.c.kid == bindparam("revoked_kid")
        ),
    )
    .values(revoked_at=_now)
    .returning(_records.c.jti)
)
# Parameters per statement of a walk: far below any backend's limit, however wide it gets.
_WALK_CHUNK = 500


def revoke_exchanged_from_key(tx: Connection, kid: str) -> None:
    """Revoke every token exchanged (RFC 8693) from a token the signing key `kid` signed, and
    what was exchanged from those: with the key revoked, the tokens it signed may be forged.

    Run in the key's revocation, after its row is written (`keys.withdraw`): an exchange
    under way share-locks that row (_INSERT_EXCHANGED), so its token is seen here.
    """
    now = utcnow()
    revoked = tx.execute(_REVOKE_EXCHANGED_FROM_KEY, {"revoked_kid": kid, "now": now}).scalars()
    _revoke_exchanged(tx, [jti for jti in revoked if jti], now)


# The access tokens exchanged (RFC 8693) to a client: records of its own in its subjects'
# logins, which deleting the client deletes (token_records.client_id cascades).
_REVOKE_EXCHANGED_TO_CLIENT = (
    update(_records)
    .where(
        _records.c.client_id == bindparam("deleted_client"),
        _records.c.kind == ACCESS,
        _records.c.revoked_at.is_(None),
    )
    .values(revoked_at=_now)
    .returning(_records.c.jti)
)


def revoke_exchanged_to_client(tx: Connection, client_id: str) -> None:
    """Revoke the tokens exchanged to the client `client_id`, and what was exchanged from them.

    Run in the client's deletion, before it: what other clients got in exchange for its
    tokens sits in other logins and outlives the cascade, and once the records it was
    exchanged from are gone, revoking the subject token upstream no longer reaches it.
    Revoking first also row-locks them: an exchange of one under way is waited for and seen.
    """
    now = utcnow()
    revoked = tx.execute(_REVOKE_EXCHANGED_TO_CLIENT, {"deleted_client": client_id, "now": now})
    _revoke_exchanged(tx, [jti for jti in revoked.scalars() if jti], now)


def _revoke_exchanged(conn: Connection, jtis: list[str], now: datetime) -> None:
    """Revoke what was exchanged from the tokens `jtis`, generation by generation.

    Exchanges nest at most MAX_ACTORS deep (oauth/exchange.py), so this is a few statements.
    Each generation is a statement of its own: on PostgreSQL it sees what an exchange of the
    previous generation committed while that row's revocation waited for it. A token already
    revoked was walked when it was, so its descendants are revoked too.
    """
    while jtis:
        found: list[str] = []
        for start in range(0, len(jtis), _WALK_CHUNK):
            params = {"parent_jtis": jtis[start : start + _WALK_CHUNK], "now": now}
            found.extend(jti for jti in conn.execute(_REVOKE_EXCHANGED, params).scalars() if jti)
        jtis = found


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


class ClientGone(Exception):
    """The client was deleted since it authenticated (another worker's copy may lag a second)."""


class Issued(enum.Enum):
    """What became of a token response's records."""

    STORED = "stored"
    CODE_SPENT = "code spent"  # another request spent the authorization code first
    PARENT_SPENT = "parent spent"  # the refresh token was spent (or revoked) meanwhile
    USER_DISABLED = "user disabled"  # its user was disabled, or got a new password, meanwhile
    SIGNED_OUT = "signed out"  # the browser session that got the code has ended, or the
    # device approval was withdrawn
    BOUND_ELSEWHERE = "bound elsewhere"  # a racing refresh bound the login to another DPoP key
    CLIENT_PUBLIC = "client public"  # the client authenticated, and was made public meanwhile


@dataclass(frozen=True, slots=True)
class NewLogin:
    """A login (token family) to store with its first tokens."""

    family_id: str
    client_id: str
    user_id: int | None  # None for client credentials
    created_at: datetime
    resources: str  # RFC 8707 resources, space separated
    dpop_jkt: str | None
    checked_hash: str | None = None  # a password login's: stored only while it is the user's
    # The browser session a code or a device approval was given in: stored only while it is live.
    session_id: str | None = None
    auth_time: datetime | None = None  # when the user signed in for it, if known
    # The device code (its digest) it comes from: stored only while that approval stands.
    device_code_hash: str | None = None
    # The client authenticated with a secret or a key: stored only while it still must.
    confidential: bool = False


def _subject(row: Any) -> Subject | None:
    """The user of a row ending in the user columns (outer-joined: None when there is none)."""
    return None if row.id is None else Subject.from_row(row)


_INSERT_RECORDS = insert(_records)
# A new login's family is stored only while its user is still enabled, in one statement: a
# login racing `users disable` either lands first (and is revoked with the rest) or not at all.
_FAMILY_COLUMNS = (
    "id",
    "client_id",
    "created_at",
    "resources",
    "dpop_jkt",
    "auth_time",
    "session_id",
)
_ACTIVE_USER = select(
    *(typed_parameter(_families.c[name]) for name in _FAMILY_COLUMNS), _users.c.id
).where(_users.c.id == bindparam("user_id"), _users.c.disabled.is_(False))
_INSERT_USER_FAMILY = (
    insert(_families).from_select([*_FAMILY_COLUMNS, "user_id"], _ACTIVE_USER)
).returning(_families.c.id)  # psycopg reports no rowcount for INSERT ... SELECT
# A password login's, also only while the password it proved is still theirs. The user's row is
# share-locked (PostgreSQL): a password change committing meanwhile is waited for and then seen
# (none is stored), or waits for this login and then revokes it. Codes and device logins are
# held by their browser session's row instead (sessions.signed_in), never by the user's.
_INSERT_PASSWORD_FAMILY = (
    insert(_families).from_select(
        [*_FAMILY_COLUMNS, "user_id"],
        _ACTIVE_USER.where(_users.c.password_hash == bindparam("checked_hash")).with_for_update(
            read=True, of=_users
        ),
    )
).returning(_families.c.id)
_INSERT_CLIENT_FAMILY = insert(_families)
# A client that must still authenticate, share-locked (PostgreSQL): an RFC 7592 update making
# it public waits for the login being stored and then revokes it (clients.update_client), or
# commits first and this finds nothing.
_STILL_CONFIDENTIAL = (
    select(_clients.c.id)
    .where(_clients.c.client_id == bindparam("client_id"), ~Client.is_public)
    .with_for_update(read=True)
)
# Spending a refresh token: one conditional UPDATE decides, so concurrent refreshes with the
# same token cannot both pass (RFC 9700 §4.14.2).
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

# RFC 9449 §5: a public client's unbound login, refreshed with a DPoP proof, is bound to that
# proof's key from then on. Conditional, so of two refreshes racing with different keys one
# binds and the other finds the login bound elsewhere.
_BIND_FAMILY = (
    update(_families)
    .where(
        _families.c.id == bindparam("family_id"),
        or_(_families.c.dpop_jkt.is_(None), _families.c.dpop_jkt == bindparam("jkt")),
    )
    .values(dpop_jkt=bindparam("jkt"))
)


def store_issued(
    records: list[dict[str, Any]],
    *,
    login: NewLogin | None = None,
    parent_hash: str | None = None,
    reuse_grace: int = 0,
    code: tuple[str, str] | None = None,
    bind: tuple[str, str] | None = None,
) -> Issued:
    """Store a token response's `records` (rows of token_records), in one transaction with
    what they come from: a new `login`, or the refresh token they replace (`parent_hash`,
    spent here; one spent less than `reuse_grace` seconds ago passes too), and the
    authorization `code` (its hash and the family it issues) being exchanged, spent here.
    With `bind` (a family and a DPoP key thumbprint), the refreshed login is bound to that key.

    The request's deferred single-use JWT ids are spent in the same commit (replay.Replayed).
    Anything but STORED stores nothing. ClientGone if the client no longer exists.
    """
    outcome = Issued.STORED

    def write(conn: Connection) -> bool:
        nonlocal outcome
        outcome = _issue(conn, login, parent_hash, reuse_grace, code)
        if outcome is Issued.STORED and bind is not None:
            params = {"family_id": bind[0], "jkt": bind[1]}
            if conn.execute(_BIND_FAMILY, params).rowcount != 1:
                outcome = Issued.BOUND_ELSEWHERE
        if outcome is Issued.STORED:
            conn.execute(_INSERT_RECORDS, records)
        return outcome is Issued.STORED

    _issuing(write)
    return outcome


# On SQLite a transaction begins at its first write; this one begins as a write at once, in
# place of that implicit BEGIN (sqlite_writers.py takes the writers' lock for it).
_BEGIN_WRITING = "BEGIN IMMEDIATE"


def _issuing(write: Callable[[Connection], bool]) -> bool:
    """Run `write` in one transaction with the request's deferred single-use JWT ids (its
    client assertion and DPoP proof): all of it commits, or nothing if `write` says False.
    On SQLite the transaction holds the write lock from its start, so what `write` reads
    stays true until it commits, as PostgreSQL's share locks keep it there.
    ClientGone if the client was deleted meanwhile (its rows are gone: a foreign key fails)."""
    try:
        with db.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # Before the reads that decide what is stored (a session still signed in, an
                # approval standing): a sign-out committing between them and the first write
                # would miss the tokens stored after it.
                conn.exec_driver_sql(_BEGIN_WRITING)
            replay.spend_pending(conn)
            stored = write(conn)
            if not stored:
                conn.rollback()
    except IntegrityError:
        raise ClientGone() from None
    if stored:
        replay.settled()
    return stored


def _issue(
    conn: Connection,
    login: NewLogin | None,
    parent_hash: str | None,
    reuse_grace: int,
    code: tuple[str, str] | None,
) -> Issued:
    session_id = login.session_id if login is not None else None
    if code is not None:
        session_id = codes.spend(conn, *code)  # the code's browser session, read as it is spent
        if session_id is None:
            return Issued.CODE_SPENT
    if parent_hash is not None:
        return Issued.STORED if _spend(conn, parent_hash, reuse_grace) else Issued.PARENT_SPENT
    assert login is not None, "a token response comes from a new login or a refresh token"
    # A login granted under the client's secret or keys must not outlive them: made public
    # since, anyone holding its refresh token could spend it with no credential. (A refresh
    # needs no such check: making the client public revokes the family it lands in.)
    if login.confidential and not _still_confidential(conn, login.client_id):
        return Issued.CLIENT_PUBLIC
    # As at Keycloak, a code (or a device approval) dies with the browser session that got it:
    # one taken just before the user signed out (or changed their password) never outlives it.
    if session_id is not None and not sessions.signed_in(conn, session_id):
        return Issued.SIGNED_OUT
    # An approval withdrawn (the app signed out) after its code was spent stores nothing.
    if login.device_code_hash is not None and not devices.still_allowed(
        conn, login.device_code_hash
    ):
        return Issued.SIGNED_OUT
    family = {
        "id": login.family_id,
        "client_id": login.client_id,
        "created_at": login.created_at,
        "resources": login.resources,
        "dpop_jkt": login.dpop_jkt,
        "auth_time": login.auth_time,
        "session_id": session_id,
    }
    if login.user_id is None:
        conn.execute(_INSERT_CLIENT_FAMILY, family)
        return Issued.STORED
    params = family | {"user_id": login.user_id, "checked_hash": login.checked_hash}
    statement = _INSERT_USER_FAMILY if login.checked_hash is None else _INSERT_PASSWORD_FAMILY
    inserted = conn.execute(statement, params).first()
    return Issued.STORED if inserted is not None else Issued.USER_DISABLED


def _still_confidential(conn: Connection, client_id: str) -> bool:
    """Whether the client still authenticates (has a secret or keys), read in the caller's
    write transaction; False if it was deleted, too."""
    return conn.execute(_STILL_CONFIDENTIAL, {"client_id": client_id}).first() is not None


def _spend(conn: Connection, token_hash: str, reuse_grace: int) -> bool:
    """Mark a refresh token spent; False if it no longer could be (the loser of a race
    presented a spent token, unless within the grace)."""
    now = utcnow()
    if conn.execute(_SPEND, {"spent_hash": token_hash, "now": now}).rowcount == 1:
        return True
    if reuse_grace <= 0:
        return False
    params = {
        "spent_hash": token_hash,
        "now": now,
        "grace_start": now - timedelta(seconds=reuse_grace),
    }
    return bool(conn.execute(_SPEND_AGAIN, params).rowcount == 1)


# An exchanged token joins its subject token's family, naming that token as its parent, only
# while the subject token and its signing key are unrevoked, its login alive and its user
# enabled, in one statement: an exchange racing a revocation lands first (and dies with the
# rest) or not at all. The subject token's row and its key's are share-locked (PostgreSQL):
# revoking either meanwhile waits for this insert, then revokes what it stored
# (revoke_access_token, revoke_exchanged_from_key), or is waited for, and then this finds it
# revoked and stores nothing.
_exchanged_from = _records.alias("exchanged_from")
_EXCHANGED_COLUMNS = ("jti", "kid", "scope", "issued_at", "expires_at", "client_id", "audience")
_INSERT_EXCHANGED = (
    insert(_records)
    .from_select(
        ["family_id", "parent_jti", "kind", *_EXCHANGED_COLUMNS],
        select(
            _exchanged_from.c.family_id,
            _exchanged_from.c.jti,
            bindparam("kind", type_=_records.c.kind.type),
            *(typed_parameter(_records.c[name]) for name in _EXCHANGED_COLUMNS),
        )
        .join(_families, _families.c.id == _exchanged_from.c.family_id)
        .join(_users, _users.c.id == _families.c.user_id)
        .join(_keys, _keys.c.kid == _exchanged_from.c.kid)
        .where(
            _exchanged_from.c.jti == bindparam("parent_jti"),
            _exchanged_from.c.kind == ACCESS,
            _exchanged_from.c.revoked_at.is_(None),
            _families.c.revoked_at.is_(None),
            _users.c.disabled.is_(False),
            _keys.c.state != "revoked",
        )
        .with_for_update(read=True, of=[_exchanged_from, _keys]),
    )
    .returning(_records.c.id)
)


def store_exchanged(record: dict[str, Any]) -> bool:
    """Store an exchanged access token's `record` in the family of the token it was exchanged
    from (`parent_jti`); False if that token or its login was revoked, or its user disabled,
    meanwhile. ClientGone as above."""
    return _issuing(lambda conn: conn.execute(_INSERT_EXCHANGED, record).first() is not None)


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


def purge(cutoff: datetime, batch_size: int) -> tuple[int, int]:
    """Delete token records that expired before `cutoff`, then logins made before it with no
    record left; how many of each went, at most `batch_size` per transaction.

    A spent refresh token's record stays until it expires like any other: presenting it again
    must still be recognised as reuse and revoke its family.
    """
    records = delete_in_batches(_records, _records.c.id, _records.c.expires_at < cutoff, batch_size)
    empty = and_(
        _families.c.created_at < cutoff,
        ~exists().where(_records.c.family_id == _families.c.id),
    )
    families = delete_in_batches(_families, _families.c.id, empty, batch_size, walk=True)
    return records, families
