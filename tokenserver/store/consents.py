"""Remembered consents: one row per (user, client, exact scope set)."""

from __future__ import annotations

from sqlalchemy import Table, delete, select
from sqlalchemy.exc import IntegrityError

from ..browser_models import Consent
from ..extensions import db, reader
from ..models import utcnow

_consents: Table = Consent.__table__


def scope_key(scope: str) -> str:
    """The stored form of a scope set: sorted, unique, space-separated."""
    return " ".join(sorted(set(scope.split())))


def remembered(user_id: int, client_id: str, scope: str) -> bool:
    """Whether the user has allowed this client this exact set of scopes before."""
    query = select(_consents.c.user_id).where(
        _consents.c.user_id == user_id,
        _consents.c.client_id == client_id,
        _consents.c.scope == scope_key(scope),
    )
    return reader().execute(query).first() is not None


def remember(user_id: int, client_id: str, scope: str) -> None:
    """Remember an "allow" (a second, concurrent one is the same answer)."""
    row = {"user_id": user_id, "client_id": client_id, "scope": scope_key(scope)}
    try:
        with db.engine.begin() as conn:
            conn.execute(_consents.insert().values({**row, "created_at": utcnow()}))
    except IntegrityError:
        pass  # already remembered


def forget(user_id: int, client_id: str) -> None:
    """Forget every consent the user gave this client (they signed the app out)."""
    with db.engine.begin() as conn:
        conn.execute(
            delete(_consents).where(
                _consents.c.user_id == user_id, _consents.c.client_id == client_id
            )
        )
