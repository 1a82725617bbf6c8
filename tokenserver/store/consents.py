"""Remembered consents: one row per (user, client, scope set, resource set) the user allowed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Table, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from ..browser_models import Consent
from ..extensions import db, reader
from ..models import utcnow
from . import transaction

_consents: Table = Consent.__table__


@dataclass(frozen=True, slots=True)
class Allowed:
    """One answer the user gave a client: these scopes, at these resources (none: our own)."""

    scopes: frozenset[str]
    resources: frozenset[str]


def _key(values: Iterable[str]) -> str:
    """The stored form of a set: sorted, unique, space-separated."""
    return " ".join(sorted(set(values)))


def _digest(resources: str) -> str:
    """What a resource set is keyed by: the SHA-256 (hex) of its stored form."""
    return hashlib.sha256(resources.encode()).hexdigest()


_GIVEN = select(_consents.c.scope, _consents.c.resources).where(
    _consents.c.user_id == bindparam("user_id"), _consents.c.client_id == bindparam("client_id")
)


def given(user_id: int, client_id: str) -> list[Allowed]:
    """Every "allow" the user has given this client and not taken back."""
    rows = reader().execute(_GIVEN, {"user_id": user_id, "client_id": client_id})
    return [Allowed(frozenset(row.scope.split()), frozenset(row.resources.split())) for row in rows]


def remember(user_id: int, client_id: str, scope: str, resources: Iterable[str] = ()) -> None:
    """Remember an "allow" (a second, concurrent one is the same answer)."""
    stored = _key(resources)
    row = {
        "user_id": user_id,
        "client_id": client_id,
        "scope": _key(scope.split()),
        "resources": stored,
        "resources_digest": _digest(stored),
    }
    try:
        with db.engine.begin() as conn:
            conn.execute(_consents.insert().values({**row, "created_at": utcnow()}))
    except IntegrityError:
        pass  # already remembered


def forget(user_id: int, client_id: str, tx: Connection | None = None) -> None:
    """Forget every consent the user gave this client (they signed the app out)."""
    with transaction(tx) as conn:
        conn.execute(
            delete(_consents).where(
                _consents.c.user_id == user_id, _consents.c.client_id == client_id
            )
        )
