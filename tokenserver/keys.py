"""Signing keys: published before they sign, promoted in the database, cached per worker.

A rotated key is `next`: in the JWKS at once, signing only once TOKENSERVER_KEY_PUBLISH_SECONDS
have passed, so no verifier meets a `kid` its cached key set lacks. Whichever worker first sees
that time pass promotes it, in one transaction; the database's unique index keeps one current key.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet, RSAKey
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoResultFound

from . import audit
from .errors import APIError, NotFound
from .keywrap import KeyEncryptionError, KeyWrapper
from .models import isoformat, utcnow
from .store import keys as stored
from .store import transaction
from .store.keys import CURRENT, NEXT, REVOKED, KeyConflict, KeyInfo, NewKey
from .store.tokens import revoking as token_revoking

KEY_SIZE = 2048
ALGORITHM = "RS256"
# A token may be presented a little after `exp` on a skewed clock; keep its key that much longer.
_RETIREMENT_GRACE = timedelta(seconds=60)


def retention(access_token_ttl: int, cache_seconds: int) -> timedelta:
    """How long a retired key stays published: a worker with a stale cache may sign with it
    for `cache_seconds` more, and what it signed then lives `access_token_ttl`."""
    return timedelta(seconds=access_token_ttl + cache_seconds) + _RETIREMENT_GRACE


@dataclass(frozen=True)
class Rotation:
    """What `keys rotate` did: the key that is (or will be) current, and whether it is new."""

    kid: str
    made: bool
    signs_from: datetime


def _new_key() -> RSAKey:
    key = RSAKey.generate_key(KEY_SIZE, parameters={"use": "sig", "alg": ALGORITHM}, private=True)
    key.ensure_kid()  # RFC 7638 thumbprint
    return key


def _to_store(wrapper: KeyWrapper, key: RSAKey) -> NewKey:
    """`key` as stored (generated before the transaction: RSA takes long; locks must not)."""
    kid = str(key.kid)
    return NewKey(
        kid=kid,
        private_key=wrapper.wrap(kid, key.as_pem(private=True).decode("ascii")),
        public_jwk=json.dumps(key.as_dict(private=False)),
    )


def rotate(
    engine: Engine,
    wrapper: KeyWrapper,
    publish_seconds: int,
    *,
    now: bool = False,
    if_older_than: timedelta | None = None,
) -> Rotation | None:
    """Publish a next key that signs after `publish_seconds`; or, `now`, a current key at once.

    With `if_older_than`, only when the current key has signed that long (None otherwise). A
    next key already pending is kept, not doubled, so cron may run this on every node at once.
    """
    delay = timedelta(seconds=publish_seconds)
    since = stored.current_since(engine)
    pending = stored.pending(engine)
    if if_older_than is not None and since is not None and utcnow() - since < if_older_than:
        return None
    if pending is not None and not now:
        return Rotation(pending.kid, False, pending.created_at + delay)
    if since is None and pending is None:
        now = True  # nothing signs yet: a first key has nobody to be published to in advance
    key = _to_store(wrapper, _new_key())
    try:
        with transaction(engine=engine) as tx:
            at = utcnow()
            if now:
                stored.retire(tx, CURRENT, at)
                stored.retire(tx, NEXT, at)  # it has never signed: nothing to keep
            kid = stored.add(tx, key, CURRENT if now else NEXT, at)
    except KeyConflict:
        # Another node rotated at the same moment (the index allows one next key): theirs stands.
        pending = stored.pending(engine)
        if pending is None:
            raise
        return Rotation(pending.kid, False, pending.created_at + delay)
    rotation = Rotation(kid, True, utcnow() if now else utcnow() + delay)
    audit.event("key.rotated", kid=kid, now=now, signs_from=isoformat(rotation.signs_from))
    return rotation


def promote_due(engine: Engine, publish_seconds: int) -> bool:
    """Make the next key current if it has been published long enough; True if this did it."""
    now = utcnow()
    return stored.promote_due(engine, now - timedelta(seconds=publish_seconds), now)


def revoke(engine: Engine, wrapper: KeyWrapper, kid: str) -> str | None:
    """Withdraw a key at once: out of the JWKS, and its tokens dead (see oauth/records.py),
    with the tokens exchanged from them (RFC 8693).

    Revoking the current key puts another in its place in the same transaction (the pending
    next key, else a new one), whose kid is returned.
    """
    replacement = _withdraw(engine, _to_store(wrapper, _new_key()), kid)
    audit.event("key.revoked", kid=kid, replaced_by=replacement)
    return replacement


def _withdraw(engine: Engine, replacement: NewKey, kid: str) -> str | None:
    """Revoke `kid`; if it was current, the key that signs in its place (`replacement` if no
    next key is pending). The replacement is made before: RSA takes long, locks must not."""
    with transaction(engine=engine) as tx:
        state = stored.state(tx, kid)
        if state is None:
            raise NotFound(f"no signing key {kid!r}")
        if state == REVOKED:
            raise APIError(f"signing key {kid} is already revoked")
        if not stored.withdraw(tx, kid, state, utcnow()):
            raise APIError(f"signing key {kid} changed meanwhile; try again")
        # Its tokens die by their kid on every check; what was exchanged from them (signed by
        # another key) is revoked here, as if each of them had been revoked.
        token_revoking.revoke_exchanged_from_key(tx, kid)
        if state != CURRENT:
            return None
        if stored.promote_next(tx, utcnow()):
            return str(stored.current_kid(tx))
        return stored.add(tx, replacement, CURRENT, utcnow())


def list_keys(engine: Engine) -> list[KeyInfo]:
    """Every stored key, newest first."""
    return stored.every(engine)


@dataclass(frozen=True)
class StoredKey:
    """A stored key's public part, and whether it was revoked (it may have leaked)."""

    key: RSAKey
    revoked: bool


class KeyRing:
    """This worker's cache of the keys in the database (explicit, and bounded in time)."""

    def __init__(
        self,
        engine: Engine,
        cache_seconds: int,
        access_token_ttl: int,
        *,
        publish_seconds: int,
        wrapper: KeyWrapper | None = None,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._publish_seconds = publish_seconds
        self._wrapper = wrapper or KeyWrapper()
        self._retention = retention(access_token_ttl, cache_seconds)
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._current: RSAKey | None = None
        self._next_kid: str | None = None  # the key published to sign next, if any
        self._keys: dict[str, RSAKey] = {}
        self._states: dict[str, str] = {}
        # Private parts parsed so far, of the next and current keys only: others have none.
        self._private: dict[str, RSAKey] = {}
        self._public: list[dict[str, Any]] = []
        # Why the current key's private part would not open at the last load (a wrong
        # TOKENSERVER_KEY_ENCRYPTION_KEY), cached like the keys: retried on the next load.
        self._sealed: str | None = None

    def signing_key(self) -> RSAKey:
        """The key new tokens are signed with, creating the first one if there is none;
        KeyEncryptionError while the configured key-encryption keys cannot open it."""
        self._refresh_if_stale()
        if self._sealed is not None:
            raise KeyEncryptionError(self._sealed)
        if self._current is None:
            with self._lock:
                if self._current is None:
                    self._create_current()
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

    def newest_private_key(self) -> RSAKey:
        """The newest published key whose private part we hold: the next key once one is
        published (every worker meets it before it signs), else the signing key."""
        current = self.signing_key()
        next_kid = self._next_kid
        newest = self.private_key(next_kid) if next_kid is not None else None
        return newest or current

    def private_key(self, kid: str) -> RSAKey | None:
        """Key `kid` with its private part, while it is published and keeps one (a retired
        key's is wiped, and a revoked key is unpublished at once); None otherwise."""
        if self.verification_key(kid) is None:
            return None
        if self._states.get(kid) not in (CURRENT, NEXT):
            return None
        key = self._private.get(kid)
        if key is None:
            with self._lock:
                key = self._private.get(kid) or self._private_key_if_kept(kid)
                if key is not None:
                    self._private[kid] = key
        return key

    def jwks(self) -> dict[str, object]:
        """The RFC 7517 key set: the next key, the current one and still-useful retired ones."""
        # Publish a key before the first token needs one (never an empty set). Public keys are
        # stored in the clear: verifiers get them even when the private part will not open.
        with contextlib.suppress(KeyEncryptionError):
            self.signing_key()
        return {"keys": list(self._public)}

    def stored_key(self, kid: str) -> StoredKey | None:
        """Key `kid` as stored now, published or not, revoked or not; None if no key has that
        kid (never ours, or deleted by `tokens purge`). For our ID tokens sent back as hints,
        which may be older than every key the JWKS publishes. One row, read by its kid: anyone
        may send a kid, and each must cost the same however many keys are stored."""
        if not _could_be_a_kid(kid):
            # A presented token's kid is whoever sent it's to write: a NUL (refused by
            # PostgreSQL text) or a lone surrogate (by every driver) would fail the query.
            return None
        found = stored.public_by_kid(self._engine, kid)
        if found is None:
            return None
        state, jwk = found
        return StoredKey(self._keys.get(kid) or _public_key(jwk), revoked=state == REVOKED)

    def unopenable(self) -> str | None:
        """Why the current signing key cannot be opened, or None: from the cache, reloaded
        at most every cache_seconds, so a readiness probe may ask on every call."""
        self._refresh_if_stale()
        return self._sealed

    def key_set(self) -> KeySet:
        """Just the current signing key, as the token generator wants it."""
        return KeySet([self.signing_key()])

    def _create_current(self) -> None:
        key = _to_store(self._wrapper, _new_key())
        try:
            with transaction(engine=self._engine) as tx:
                stored.add(tx, key, CURRENT, utcnow())
        except KeyConflict:
            pass  # another worker or node made it first; the unique index kept theirs alone

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at > self._cache_seconds:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._cache_seconds:
                    self._load()

    def _load(self) -> None:
        rows = self._select()
        due = utcnow() - timedelta(seconds=self._publish_seconds)
        if any(row.state == NEXT and row.created_at <= due for row in rows):
            promote_due(self._engine, self._publish_seconds)
            rows = self._select()
        current_kid = next((row.kid for row in rows if row.state == CURRENT), None)
        states = {row.kid: row.state for row in rows}
        private = {k: v for k, v in self._private.items() if states.get(k) in (CURRENT, NEXT)}
        current = private.get(current_kid) if current_kid is not None else None
        sealed = None
        if current is None and current_kid is not None:
            try:
                current = private[current_kid] = self._private_key(current_kid)
            except KeyEncryptionError as exc:
                sealed = str(exc)  # kept, so each request does not query and fail again
        # Verifying needs only public keys; the private part is parsed for the current key alone.
        self._public = [json.loads(row.public_jwk) for row in rows]
        self._keys = {
            row.kid: self._keys.get(row.kid) or RSAKey.import_key(jwk)
            for row, jwk in zip(rows, self._public, strict=True)
        }
        self._states = states
        self._private = private
        self._next_kid = next((row.kid for row in rows if row.state == NEXT), None)
        self._current = current
        self._sealed = sealed
        self._loaded_at = time.monotonic()

    def _select(self) -> list[stored.Published]:
        return stored.published(self._engine, retired_after=utcnow() - self._retention)

    def _private_key_if_kept(self, kid: str) -> RSAKey | None:
        try:
            kept = stored.private_key(self._engine, kid)
        except NoResultFound:
            return None  # purged since our last look
        if not kept:
            return None  # retired or revoked since our last look: its private part is wiped
        return self._unwrap(kid, kept)

    def _private_key(self, kid: str) -> RSAKey:
        return self._unwrap(kid, stored.private_key(self._engine, kid))

    def _unwrap(self, kid: str, kept: str) -> RSAKey:
        pem = self._wrapper.unwrap(kid, kept)
        return RSAKey.import_key(pem, parameters={"kid": kid, "use": "sig", "alg": ALGORITHM})


_KID_LENGTH = 64  # the column's; ours are RFC 7638 thumbprints, 43 characters


def _could_be_a_kid(kid: str) -> bool:
    """Whether `kid` could name a stored key: printable ASCII that fits the column."""
    return 0 < len(kid) <= _KID_LENGTH and kid.isascii() and kid.isprintable()


@functools.lru_cache(maxsize=32)
def _public_key(jwk: str) -> RSAKey:
    """A stored public JWK, parsed: a cache of parses, as a kid's key never changes."""
    return RSAKey.import_key(json.loads(jwk))


def current_keyring() -> KeyRing:
    """This worker's key ring."""
    from flask import current_app

    keyring: KeyRing = current_app.extensions["tokenserver.keyring"]
    return keyring
