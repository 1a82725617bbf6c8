"""Tokens: logins (token families), the records of the tokens they issued, and revoking them.

The grants' hot statements (issuing, spending, the bearer check) are in oauth/records.py,
built once beside the rules they serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, bindparam, exists, func, select, update

from ..extensions import reader
from ..models import Client, TokenFamily, TokenRecord, UTCDateTime, utcnow
from . import transaction

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
_clients: Table = Client.__table__
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
    condition = [_families.c.user_id == user_id, _families.c.revoked_at.is_(None)]
    if client_id is not None:
        condition.append(_families.c.client_id == client_id)
    if keep_family is not None:
        condition.append(_families.c.id != keep_family)
    with transaction(tx) as conn:
        result = conn.execute(update(_families).where(*condition).values(revoked_at=utcnow()))
    return int(result.rowcount)


def revoke_access_token(jti: str) -> None:
    """Revoke one access token."""
    with transaction() as conn:
        conn.execute(_REVOKE_ACCESS, {"token_jti": jti, "now": utcnow()})


def signed_in_apps(user_id: int) -> list[SignedInApp]:
    """Clients with a live token of the user, the app they signed in to first listed first."""
    live = exists().where(
        _records.c.family_id == _families.c.id,
        _records.c.revoked_at.is_(None),
        _records.c.spent_at.is_(None),
        _records.c.expires_at > utcnow(),
    )
    query = (
        select(_clients.c.client_id, _clients.c.name, func.min(_families.c.created_at))
        .join(_clients, _clients.c.client_id == _families.c.client_id)
        .where(_families.c.user_id == user_id, _families.c.revoked_at.is_(None), live)
        .group_by(_clients.c.client_id, _clients.c.name)
        .order_by(func.min(_families.c.created_at))
    )
    return [SignedInApp(*row) for row in reader().execute(query)]
