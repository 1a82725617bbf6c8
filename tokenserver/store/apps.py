"""The apps a user is signed in to: their live token families, grouped by client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, exists, func, select, update

from ..extensions import db
from ..models import Client, TokenFamily, TokenRecord, utcnow

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
_clients: Table = Client.__table__


@dataclass(frozen=True)
class SignedInApp:
    """A client holding live tokens of the user."""

    client_id: str
    name: str
    since: datetime


def list_signed_in(user_id: int) -> list[SignedInApp]:
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
    with db.engine.connect() as conn:
        return [SignedInApp(*row) for row in conn.execute(query)]


def revoke(user_id: int, client_id: str | None = None) -> int:
    """Revoke the user's token families (of one client, or all); returns how many."""
    condition = [_families.c.user_id == user_id, _families.c.revoked_at.is_(None)]
    if client_id is not None:
        condition.append(_families.c.client_id == client_id)
    with db.engine.begin() as conn:
        revoked: int = conn.execute(
            update(_families).where(*condition).values(revoked_at=utcnow())
        ).rowcount
    return revoked
