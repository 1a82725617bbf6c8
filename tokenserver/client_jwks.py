"""A client's JWKS document (RFC 7517): which sets of public signing keys it may register.

The same rules judge a JWKS registered inline and one fetched from a client's jwks_uri
(oauth/client_keys.py); but a key too weak to trust, or unable to sign, refuses a registration
whole, while in a fetched (or already stored) document it is only left out.
"""

from __future__ import annotations

import warnings
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

KEY_TYPES = ("RSA", "EC", "OKP")
# RFC 7518 §3.3: an RSA key for RS256 or PS256 must have at least 2048 bits; a smaller one can
# be factored, and whoever factors it signs as the client (or as the holder of a DPoP key).
MIN_RSA_BITS = 2048
# The curves of the algorithms we verify (ES256, EdDSA): X25519 and X448 are for key agreement
# and cannot sign; a key on another curve could never verify one of our assertions.
_SIGNING_CURVES = {"EC": ("P-256",), "OKP": ("Ed25519", "Ed448")}


class KeysUnavailable(Exception):
    """The client's keys cannot be had: a bad document, or its jwks_uri failed."""


def public_key_set(document: Any, *, skip_unusable: bool = False) -> KeySet:
    """`document` as a set of public signing keys, or KeysUnavailable saying what is wrong.

    `skip_unusable`: leave out keys that cannot sign or are too weak, instead of refusing the
    document (for keys registered before the rule, and documents at a client's jwks_uri).
    """
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
        detail = f" ({exc})" if str(exc) else ""  # some of joserfc's say nothing
        raise KeysUnavailable(f"jwks holds a key that cannot be read{detail}") from None
    except KeyError as exc:  # joserfc looks an EC or OKP key's curve up unchecked
        raise KeysUnavailable(f"jwks holds a key on a curve we do not know ({exc})") from None
    if any(key.is_private for key in keys):
        raise KeysUnavailable("jwks must hold public keys only, never private parts")
    problems = [(key, _signing_problem(key)) for key in keys]
    if not skip_unusable:
        for _key, problem in problems:
            if problem is not None:
                raise KeysUnavailable(f"jwks holds a key that {problem}")
        return keys
    usable = [key for key, problem in problems if problem is None]
    if not usable:
        raise KeysUnavailable("jwks holds no key strong enough to sign")
    return KeySet(usable)


def _signing_problem(key: Key) -> str | None:
    """Why `key` cannot sign an assertion we would accept, or None."""
    if key.key_type == "RSA":
        if key.raw_value.key_size < MIN_RSA_BITS:  # type: ignore[union-attr]
            return f"has fewer than {MIN_RSA_BITS} bits (RSA keys need at least {MIN_RSA_BITS})"
        return None
    curve = key.curve_name  # type: ignore[union-attr]
    if curve not in _SIGNING_CURVES[key.key_type]:
        accepted = " or ".join(_SIGNING_CURVES[key.key_type])
        return f"is on curve {curve} ({key.key_type} keys must be on {accepted} to sign)"
    return None
