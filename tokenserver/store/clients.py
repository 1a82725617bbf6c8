"""Clients: registrations, secrets and keys.

Reads hand back detached Client entities (Authlib's ClientMixin lives on them): changing one
changes nothing stored. Writes are Core statements, committed before returning (or in a
caller's `tx`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from ..extensions import db
from ..models import Client
from . import transaction
from .tokens.revoking import revoke_exchanged_to_client

_clients: Table = Client.__table__
# Built once: every token, introspection and revocation request may look its client up.
_BY_ID = select(Client).where(Client.client_id == bindparam("client_id"))
_MAX_ID_LENGTH = 64  # the column's width


def find(client_id: str) -> Client | None:
    """The client with this id, or None."""
    if len(client_id) > _MAX_ID_LENGTH or "\x00" in client_id:
        return None  # cannot be ours, and PostgreSQL refuses NUL in text (a 500, not a 401)
    return _detached(db.session.scalars(_BY_ID, {"client_id": client_id}).first())


def find_managed(client_id: str, registration_token_hash: str) -> Client | None:
    """The client with this id if `registration_token_hash` manages it (RFC 7592), or None."""
    if len(client_id) > _MAX_ID_LENGTH or "\x00" in client_id:
        return None
    query = select(Client).where(
        Client.client_id == client_id,
        Client.registration_token_hash == registration_token_hash,
    )
    return _detached(db.session.scalars(query).first())


def named(name: str) -> Client | None:
    """The oldest client with this name, or None."""
    query = select(Client).where(Client.name == name).order_by(Client.id)
    return _detached(db.session.scalars(query).first())


def any_registered() -> bool:
    """Whether any client is registered at all."""
    return db.session.scalars(select(Client.id).limit(1)).first() is not None


def every() -> list[Client]:
    """Every client, oldest first."""
    clients = list(db.session.scalars(select(Client).order_by(Client.id)).all())
    for client in clients:
        db.session.expunge(client)
    return clients


def redirect_uris() -> list[str]:
    """Every client's registered redirect URIs, each client's as one space-separated string."""
    query = select(Client.redirect_uris).where(Client.redirect_uris != "")
    return list(db.session.scalars(query).all())


def add(columns: dict[str, Any], tx: Connection | None = None) -> None:
    """Store a new client with these column values."""
    with transaction(tx) as conn:
        conn.execute(insert(_clients), columns)


def change(client_id: str, columns: dict[str, Any], tx: Connection | None = None) -> bool:
    """Set some columns of a client; False if there is no such client."""
    with transaction(tx) as conn:
        changed = conn.execute(
            update(_clients).where(_clients.c.client_id == client_id).values(**columns)
        )
    return changed.rowcount == 1


def replace_secret(
    client_id: str,
    expected_hash: str,
    new_hash: str,
    previous_hash: str | None,
    previous_until: datetime | None,
) -> bool:
    """Swap a client's secret digest if it is still `expected_hash`; False if it changed.

    Conditional on the digest read: two rotations at once cannot both keep "the old" secret.
    """
    with transaction() as conn:
        changed = conn.execute(
            update(_clients)
            .where(_clients.c.client_id == client_id, _clients.c.secret_hash == expected_hash)
            .values(
                secret_hash=new_hash,
                previous_secret_hash=previous_hash,
                previous_secret_expires_at=previous_until,
            )
        )
    return changed.rowcount == 1


def remove(client_id: str) -> bool:
    """Delete a client and, by cascade, every token and code issued to it, first revoking what
    other clients were given in exchange for its tokens; False if none."""
    with transaction() as conn:
        revoke_exchanged_to_client(conn, client_id)
        gone = conn.execute(delete(_clients).where(_clients.c.client_id == client_id))
    return gone.rowcount == 1


def _detached(client: Client | None) -> Client | None:
    if client is not None:
        db.session.expunge(client)  # a commit elsewhere must not expire what callers read
    return client
