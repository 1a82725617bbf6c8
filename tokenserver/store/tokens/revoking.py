"""Revoking logins and access tokens, and the tokens exchanged (RFC 8693) from them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Table, bindparam, exists, update

from ...models import TokenFamily, TokenRecord, UTCDateTime, utcnow
from .. import transaction
from . import ACCESS

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
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
        # share-locks it, see issuing._INSERT_EXCHANGED), so what that exchange stores is seen
        # below.
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
    under way share-locks that row (issuing._INSERT_EXCHANGED), so its token is seen here.
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
