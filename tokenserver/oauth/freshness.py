"""When a request that forces a sign-in (prompt=login, max_age) sent the user to /login.

The way back from /login is a URL the browser holds: it must keep prompt and max_age, or
anyone at a signed-in browser could open it and get a code without the password. It carries
`login_after`, the moment the request was made, with an HMAC of that moment and of every
other parameter under a secret derived from our signing key (as DPoP nonces are), so a sign-in
since then meets the request, as a sign-in since a push meets a pushed one (RFC 9126).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta

from joserfc.jwk import RSAKey
from joserfc.util import urlsafe_b64encode
from werkzeug.datastructures import MultiDict

from ..keys import current_keyring
from ..models import utcnow
from .nonces import derived_secret
from .pushed import LIFETIME

PARAMETER = "login_after"
_LABEL = b"tokenserver login_after v1"  # never valid as a DPoP nonce, nor the other way round
_MAC_BYTES = 16
# Microseconds since the epoch, the MAC, the signing key's kid (public, at most 64 characters).
_SHAPE = re.compile(r"([0-9]{1,17})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{1,64})")


def forces_sign_in(parameters: MultiDict[str, str]) -> bool:
    """Whether the request asks for a sign-in however recent the session is."""
    prompts = set(parameters.get("prompt", "").split())
    return bool({"login", "select_account"} & prompts) or "max_age" in parameters


def way_back(parameters: MultiDict[str, str]) -> list[tuple[str, str]]:
    """The request's parameters for the way back from /login, stamped with now if it forces a
    sign-in; any stamp it came with is replaced."""
    kept = _unstamped(parameters)
    if not forces_sign_in(parameters):
        return kept
    return _stamped(kept, utcnow())


def from_sign_in(parameters: MultiDict[str, str], auth_time: datetime) -> list[tuple[str, str]]:
    """The parameters for /consent after a sign-in that met the request's stamp: stamped with
    that sign-in instead, so the stamp's lifetime runs from it, not from the trip to /login
    (the sign-in still meets the request: it is not before its own time)."""
    stamped = since(parameters)
    if stamped is None or auth_time < stamped:
        return list(parameters.items(multi=True))
    return _stamped(_unstamped(parameters), auth_time)


def since(parameters: MultiDict[str, str]) -> datetime | None:
    """When the request sent the user to sign in, if its stamp is ours, for exactly these
    parameters, and recent; None otherwise (a sign-in before it then meets nothing)."""
    match = _SHAPE.fullmatch(parameters.get(PARAMETER, ""))
    if match is None or len(parameters.getlist(PARAMETER)) != 1:
        return None
    micros, mac, kid = int(match[1]), match[2], match[3]
    key = current_keyring().private_key(kid)
    if key is None:
        return None  # retired or revoked: its stamps vouch for nothing
    rest = _unstamped(parameters)
    # Constant time: a forger learns nothing from how long the refusal took.
    if not hmac.compare_digest(mac, _mac(key, micros, rest)):
        return None
    stamped = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    if utcnow() - stamped > timedelta(seconds=LIFETIME):
        return None  # an old stamp would let a sign-in long after the request count for it
    return stamped


def _unstamped(parameters: MultiDict[str, str]) -> list[tuple[str, str]]:
    """Every parameter but the stamp: what a stamp's MAC covers."""
    return [(k, v) for k, v in parameters.items(multi=True) if k != PARAMETER]


def _stamped(parameters: list[tuple[str, str]], moment: datetime) -> list[tuple[str, str]]:
    micros = _micros(moment)
    key = current_keyring().newest_private_key()
    return [*parameters, (PARAMETER, f"{micros}.{_mac(key, micros, parameters)}.{key.kid}")]


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _mac(key: RSAKey, micros: int, parameters: list[tuple[str, str]]) -> str:
    # Bound to the whole request: a stamp copied onto another client's request is worthless.
    message = json.dumps([micros, sorted(parameters)], separators=(",", ":")).encode()
    secret = derived_secret(key, _LABEL)
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:_MAC_BYTES]
    return urlsafe_b64encode(digest).decode("ascii")
