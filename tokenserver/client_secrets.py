"""Client secrets: rotation, with the old secret kept working for an overlap if asked."""

from __future__ import annotations

from datetime import datetime, timedelta

from . import audit
from .digests import digest, new_secret
from .errors import APIError, NotFound
from .models import isoformat, utcnow
from .store import clients


def rotate_secret(client_id: str, overlap: int) -> tuple[str, datetime | None]:
    """Give a confidential client a new secret (returned once); the old one works `overlap`
    seconds more (0: not at all). Returns the secret and the old one's end, if it has one."""
    client = clients.find(client_id)
    if client is None:
        raise NotFound(f"no client with id {client_id!r}")
    if client.secret_hash is None:
        kind = "public" if client.is_public else "authenticated by its keys"
        raise APIError(f"client {client_id} is {kind}: it has no secret to rotate")
    secret, now = new_secret(32), utcnow()
    until = now + timedelta(seconds=overlap) if overlap > 0 else None
    previous = client.secret_hash if until else None
    if not clients.replace_secret(client_id, client.secret_hash, digest(secret), previous, until):
        raise APIError(f"the secret of client {client_id} changed meanwhile; try again")
    audit.event(
        "client.secret_rotated",
        client_id=client_id,
        overlap=overlap,
        previous_valid_until=isoformat(until) if until else None,
    )
    return secret, until
