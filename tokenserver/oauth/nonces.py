"""DPoP server-provided nonces (RFC 9449 §8, §9): stateless, the same on every worker and node.

A nonce is the index of a time window and an HMAC of that index, followed by the `kid` of the
signing key whose private part the HMAC's secret is derived from (kids are public). Nothing is
stored per nonce: any worker checks another node's nonce by computing the HMAC again under the
key it names, loaded from the database. A nonce is good in the window it was made in and the
next one, so for WINDOW to 2 x WINDOW seconds, while its key is published and keeps its private
part. Nonces are made under the next key as soon as one is published: it is published for
TOKENSERVER_KEY_PUBLISH_SECONDS before it signs, so every worker has moved to it by the time
the old key is retired (and its private part wiped). A key made current at once (`keys rotate
--now`) retires the old one at once: workers that have not reloaded their keys yet keep making
nonces under it for up to TOKENSERVER_KEY_CACHE_SECONDS, which the others refuse, at the cost
of one retry with the fresh nonce they answer with.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time

from joserfc.jwk import RSAKey
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

from ..keys import current_keyring

WINDOW = 300  # seconds
_WINDOWS_ACCEPTED = (0, 1)  # the current window, and the previous one
_LABEL = b"tokenserver DPoP nonce v1"  # a MAC here is never valid as any other of our digests
_MAC_BYTES = 16
_INDEX = struct.Struct(">Q")
_LENGTH = len(urlsafe_b64encode(bytes(_INDEX.size + _MAC_BYTES)))
_SEPARATOR = "."  # RFC 9449 §8.1: a nonce is any visible ASCII but '"' and '\\'
_MAX_KID_LENGTH = 64  # ours are RFC 7638 thumbprints, 43 characters

# This worker's cache of secrets derived from signing keys, by kid and label: serialising a
# private key takes longer than the HMAC. A derived value never changes; few keys ever live.
_secrets: dict[tuple[str, bytes], bytes] = {}


def issue(now: float | None = None) -> str:
    """A fresh nonce, good for this window and the next, on every worker and node."""
    index = _window(now)
    key = current_keyring().newest_private_key()
    mac = urlsafe_b64encode(_INDEX.pack(index) + _mac(key, index)).decode("ascii")
    return f"{mac}{_SEPARATOR}{key.kid}"


def is_fresh(nonce: object, now: float | None = None) -> bool:
    """Whether `nonce` is one we issued in this window or the previous one."""
    if not isinstance(nonce, str) or not nonce.isascii():
        return False
    encoded, _, kid = nonce.partition(_SEPARATOR)
    if len(encoded) != _LENGTH or not 0 < len(kid) <= _MAX_KID_LENGTH:
        return False
    try:
        raw = urlsafe_b64decode(encoded.encode("ascii"))
    except (ValueError, TypeError):
        return False
    if len(raw) != _INDEX.size + _MAC_BYTES:
        return False
    (index,) = _INDEX.unpack(raw[: _INDEX.size])
    if _window(now) - index not in _WINDOWS_ACCEPTED:
        return False  # stale, or from a future no node has reached
    # A revoked key, perhaps leaked, vouches for nothing: it is unpublished at once.
    key = current_keyring().private_key(kid)
    if key is None:
        return False
    # Constant time: a forger learns nothing from how long the refusal took.
    return hmac.compare_digest(raw[_INDEX.size :], _mac(key, index))


def _window(now: float | None) -> int:
    return int((time.time() if now is None else now) // WINDOW)


def _mac(key: RSAKey, index: int) -> bytes:
    secret = derived_secret(key, _LABEL)
    return hmac.new(secret, _INDEX.pack(index), hashlib.sha256).digest()[:_MAC_BYTES]


def derived_secret(key: RSAKey, label: bytes) -> bytes:
    """A secret only holders of the private key can derive (as accounts._name_digest does);
    each `label` gets its own, so a MAC made for one use is never valid for another."""
    cached = (str(key.kid), label)
    secret = _secrets.get(cached)
    if secret is None:
        private = str(key.as_dict(private=True)["d"]).encode("ascii")
        secret = hmac.new(private, label, hashlib.sha256).digest()
        if len(_secrets) >= 16:
            _secrets.clear()  # keys are few: a full cache means many rotations, keep it small
        _secrets[cached] = secret
    return secret
