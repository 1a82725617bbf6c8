"""A client's JWKS document (RFC 7517): which sets of public signing keys it may register.

The same rules judge a JWKS registered inline and one fetched from a client's jwks_uri
(oauth/client_keys.py).
"""

from __future__ import annotations

import warnings
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

KEY_TYPES = ("RSA", "EC", "OKP")


class KeysUnavailable(Exception):
    """The client's keys cannot be had: a bad document, or its jwks_uri failed."""


def public_key_set(document: Any) -> KeySet:
    """`document` as a set of public signing keys, or KeysUnavailable saying what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable('jwks must be a JSON object with a "keys" array')
    if not document["keys"]:
        raise KeysUnavailable("jwks holds no key")
    for key in document["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in KEY_TYPES:
            raise KeysUnavailable(f"jwks keys must be public {', '.join(KEY_TYPES)} keys")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc warns of small keys
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as exc:
        raise KeysUnavailable(f"jwks holds a key that cannot be read ({exc})") from None
    if any(key.is_private for key in keys):
        raise KeysUnavailable("jwks must hold public keys only, never private parts")
    return keys
