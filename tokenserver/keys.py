"""Signing keys: created on first need, rotated by the CLI, cached per worker for a few seconds."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection, Engine

from .models import SigningKey, utcnow

KEY_SIZE = 2048
ALGORITHM = "RS256"
# A token may be presented a little after `exp` on a skewed clock; keep its key that much longer.
_RETIREMENT_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class KeyInfo:
    """A signing key's public facts, for `keys list`."""

    kid: str
    created_at: datetime
    retired_at: datetime | None


def _new_key() -> RSAKey:
    key = RSAKey.generate_key(KEY_SIZE, parameters={"use": "sig", "alg": ALGORITHM}, private=True)
    key.ensure_kid()  # RFC 7638 thumbprint
    return key


def _insert(engine: Engine, key: RSAKey, retire_others: bool) -> None:
    now = utcnow()
    with engine.begin() as conn:
        if retire_others:
            conn.execute(
                update(SigningKey).where(SigningKey.retired_at.is_(None)).values(retired_at=now)
            )
        conn.execute(
            SigningKey.__table__.insert().values(
                kid=key.kid,
                private_pem=key.as_pem(private=True).decode("ascii"),
                public_jwk=json.dumps(key.as_dict(private=False)),
                created_at=now,
            )
        )


def rotate(engine: Engine) -> str:
    """Make a new current key; older ones stay published until their tokens have expired."""
    key = _new_key()
    _insert(engine, key, retire_others=True)
    return str(key.kid)


def list_keys(engine: Engine) -> list[KeyInfo]:
    """Every stored key, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(SigningKey.kid, SigningKey.created_at, SigningKey.retired_at).order_by(
                SigningKey.created_at.desc()
            )
        )
        return [KeyInfo(*row) for row in rows]


class KeyRing:
    """This worker's cache of the keys in the database (explicit, and bounded in time)."""

    def __init__(self, engine: Engine, cache_seconds: int, access_token_ttl: int) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._retention = timedelta(seconds=access_token_ttl) + _RETIREMENT_GRACE
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._current: RSAKey | None = None
        self._keys: dict[str, RSAKey] = {}
        self._public: list[dict[str, Any]] = []

    def signing_key(self) -> RSAKey:
        """The key new tokens are signed with, creating the first one if there is none."""
        self._refresh_if_stale()
        if self._current is None:
            with self._lock:
                if self._current is None:
                    _insert(self._engine, _new_key(), retire_others=False)
                    self._load()
        assert self._current is not None
        return self._current

    def verification_key(self, kid: str) -> RSAKey | None:
        """The public key for `kid`, if it may still verify tokens."""
        self._refresh_if_stale()
        key = self._keys.get(kid)
        if key is None:
            # Perhaps rotated elsewhere since our last look: reload once. Concurrent misses
            # share one reload, so an unknown kid costs one small query, as a valid token does.
            asked = time.monotonic()
            with self._lock:
                if self._loaded_at < asked:
                    self._load()
            key = self._keys.get(kid)
        return key

    def jwks(self) -> dict[str, object]:
        """The RFC 7517 key set: current and still-useful retired public keys."""
        self.signing_key()  # publish a key before the first token needs one: never an empty set
        return {"keys": list(self._public)}

    def key_set(self) -> KeySet:
        """Just the current signing key, as the token generator wants it."""
        return KeySet([self.signing_key()])

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at > self._cache_seconds:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._cache_seconds:
                    self._load()

    def _load(self) -> None:
        cutoff = utcnow() - self._retention
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(SigningKey.kid, SigningKey.public_jwk, SigningKey.retired_at)
                .where(or_(SigningKey.retired_at.is_(None), SigningKey.retired_at > cutoff))
                .order_by(SigningKey.created_at.desc())
            ).all()
            current_kid = next((kid for kid, _jwk, retired_at in rows if retired_at is None), None)
            current = self._current if self._current and self._current.kid == current_kid else None
            if current is None and current_kid is not None:
                current = _private_key(conn, current_kid)
        # Verifying needs only public keys; the private part is parsed for the current key alone.
        self._public = [json.loads(jwk) for _kid, jwk, _retired_at in rows]
        self._keys = {
            kid: self._keys.get(kid) or RSAKey.import_key(jwk)
            for (kid, _jwk, _retired_at), jwk in zip(rows, self._public, strict=True)
        }
        self._current = current
        self._loaded_at = time.monotonic()


def _private_key(conn: Connection, kid: str) -> RSAKey:
    pem: str = conn.execute(
        select(SigningKey.private_pem).where(SigningKey.kid == kid)
    ).scalar_one()
    return RSAKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": ALGORITHM})


def current_keyring() -> KeyRing:
    """This worker's key ring."""
    from flask import current_app

    keyring: KeyRing = current_app.extensions["tokenserver.keyring"]
    return keyring
