"""Opaque random credentials and the SHA-256 digests stored in their place."""

from __future__ import annotations

import hashlib
import secrets


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random credential of `nbytes` bytes (256 bits by default)."""
    return secrets.token_urlsafe(nbytes)


def digest(value: str) -> str:
    """The hex SHA-256 of a high-entropy credential: what the database keeps instead of it."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_identifier() -> str:
    """A random public identifier (a client_id): hex, so it never starts with '-' as an option."""
    return secrets.token_hex(16)
