"""Private signing keys at rest: AES-GCM under the key-encryption key, rewrapping, checks.

A wrapped key is stored as `aesgcm:<key id>:<base64 of nonce + ciphertext>`, with the key's
`kid` as associated data, so a ciphertext copied onto another row does not decrypt. The key id
names which key-encryption key wrapped it (several may be configured while rotating); anything
else in the column is a PEM stored before encryption was switched on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Engine

from . import audit
from .config import ConfigError, Settings
from .errors import APIError
from .store import keys as stored
from .store import transaction

PREFIX = "aesgcm:"
_NONCE_BYTES = 12  # NIST SP 800-38D: 96-bit random nonces, one per encryption
ENV = "TOKENSERVER_KEY_ENCRYPTION_KEY"


class KeyEncryptionError(Exception):
    """A stored private key that the configured key-encryption keys cannot open (one line)."""


def key_id(key: bytes) -> str:
    """A short public name for a key-encryption key; reveals nothing about the key."""
    return hmac.new(key, b"tokenserver key-encryption key id", hashlib.sha256).hexdigest()[:16]


class KeyWrapper:
    """Wraps private keys under the first configured key; unwraps under any of them."""

    def __init__(self, keys: tuple[bytes, ...] = ()) -> None:
        self._keys = {key_id(key): AESGCM(key) for key in keys}
        self._first = key_id(keys[0]) if keys else None

    @property
    def enabled(self) -> bool:
        """Whether new private keys are stored encrypted."""
        return self._first is not None

    def wrap(self, kid: str, pem: str) -> str:
        """The stored form of a private key: encrypted when a key is configured, else the PEM."""
        if self._first is None:
            return pem
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._first].encrypt(nonce, pem.encode("ascii"), kid.encode())
        return f"{PREFIX}{self._first}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def unwrap(self, kid: str, stored: str) -> str:
        """The PEM of a stored private key; KeyEncryptionError if no configured key opens it."""
        if not stored.startswith(PREFIX):
            return stored  # stored before encryption was switched on
        name, _, blob = stored[len(PREFIX) :].partition(":")
        aead = self._keys.get(name)
        if aead is None:
            if not self._keys:
                raise KeyEncryptionError(
                    f"{ENV} is not set, but the signing keys in the database are encrypted"
                )
            raise KeyEncryptionError(
                f"{ENV} cannot decrypt the signing keys in the database "
                "(they were encrypted under another key)"
            )
        raw = base64.b64decode(blob)
        try:
            pem = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], kid.encode())
        except InvalidTag:
            raise KeyEncryptionError(
                f"{ENV} cannot decrypt signing key {kid} (it was altered or moved)"
            ) from None
        return pem.decode("ascii")

    def is_wrapped_by_first(self, stored: str) -> bool:
        """Whether a stored key is already encrypted under the first configured key."""
        return self._first is not None and stored.startswith(f"{PREFIX}{self._first}:")


def rewrap(engine: Engine, wrapper: KeyWrapper) -> int:
    """Encrypt every stored private key under the first key-encryption key; how many changed."""
    if not wrapper.enabled:
        raise APIError("set TOKENSERVER_KEY_ENCRYPTION_KEY (the new key first) before rewrapping")
    changed = 0
    with transaction(engine=engine) as tx:
        for key in stored.wrapped(tx):
            if wrapper.is_wrapped_by_first(key.private_key):
                continue
            fresh = wrapper.wrap(key.kid, wrapper.unwrap(key.kid, key.private_key))
            changed += stored.rewrap(tx, key.kid, key.private_key, fresh)
    audit.event("key.rewrapped", keys=changed)
    return changed


def check_wrapping(engine: Engine, wrapper: KeyWrapper) -> None:
    """Raise KeyEncryptionError unless every stored private key opens with the configured keys."""
    for key in stored.wrapped(engine):
        wrapper.unwrap(key.kid, key.private_key)


def check_at_startup(settings: Settings) -> str | None:
    """For gunicorn's master and the CLI, before anything else: keys that do not open raise
    ConfigError (one line); an unset key-encryption key returns a warning line."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not os.path.exists(url.database or ""):
        pass  # a new database: nothing stored yet (and the master must not create the file)
    else:
        engine = create_engine(
            url, connect_args={"connect_timeout": 3} if "postgres" in url.drivername else {}
        )
        try:
            check_wrapping(engine, KeyWrapper(settings.key_encryption_keys))
        except KeyEncryptionError as exc:
            raise ConfigError(str(exc)) from None
        except SQLAlchemyError:
            pass  # no schema yet, or no database: `db upgrade` and /readyz deal with that
        finally:
            engine.dispose()
    if settings.key_encryption_keys:
        return None
    return f"{ENV} is not set: private signing keys are stored unencrypted"
