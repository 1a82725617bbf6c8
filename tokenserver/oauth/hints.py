"""id_token_hint: an ID token of ours, passed back to name a user (OpenID Connect Core §3.1.2.1)."""

from __future__ import annotations

from typing import Any

from flask import g
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..config import current_settings
from ..keys import ALGORITHM, StoredKey, current_keyring

_ID_TOKEN_TYPE = "JWT"  # ours; our access tokens are at+jwt
_LOOKED_UP = "tokenserver_hint_keys"  # g: kid -> the key stored under it, this request


def is_id_token(token: str) -> bool:
    """Whether a JWT says it is an ID token: ours are typed JWT, our access tokens at+jwt."""
    return _header(token).get("typ") == _ID_TOKEN_TYPE


def hint_keys(token: str) -> KeySet:
    """The key a JWT names by its kid, if it is one of ours not revoked: at most one."""
    _kid, found = _stored_key(token)
    return KeySet([found.key] if found is not None and not found.revoked else [])


def signed_by_a_deleted_key(token: str) -> bool:
    """Whether a JWT names a kid we no longer store (deleted by `tokens purge`, a day or so
    after the last token it signed expired): what it says can no longer be checked."""
    kid, found = _stored_key(token)
    return kid is not None and found is None


def _header(token: str) -> dict[str, Any]:
    try:
        return dict(jws.extract_compact(token.encode()).headers())
    except (JoseError, ValueError):
        return {}


def _stored_key(token: str) -> tuple[str | None, StoredKey | None]:
    """The kid a JWT names, and the key stored under it: read once per request, however many
    checks ask (a logout asks whether the key is gone, then for the key itself)."""
    kid = _header(token).get("kid")
    if not isinstance(kid, str):
        return None, None
    looked_up: dict[str, StoredKey | None] = g.setdefault(_LOOKED_UP, {})
    if kid not in looked_up:
        looked_up[kid] = current_keyring().stored_key(kid)
    return kid, looked_up[kid]


def hinted_subject(hint: str, client_id: str) -> str | None:
    """The sub of an ID token we issued to this client, or None if the hint is not one.

    Its exp is not checked: a client passes back the ID token it was given, which may be old
    (and signed by a key we have rotated out since).
    """
    try:
        # Only RS256, only under a kid of ours, which may have left the JWKS since it signed.
        decoded = jwt.decode(hint, hint_keys(hint), algorithms=[ALGORITHM])
    except (JoseError, ValueError, TypeError, KeyError, AttributeError):
        return None  # not a JWS of ours, or not even a JWS
    if decoded.header.get("typ") != _ID_TOKEN_TYPE:  # our access tokens carry our signature too
        return None
    claims = decoded.claims
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience or []
    if claims.get("iss") != current_settings().issuer or client_id not in audiences:
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) else None
