"""id_token_hint: an ID token of ours, passed back to name a user (OpenID Connect Core §3.1.2.1)."""

from __future__ import annotations

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..config import current_settings
from ..keys import ALGORITHM, current_keyring

_ID_TOKEN_TYPE = "JWT"  # ours; our access tokens are at+jwt


def is_id_token(token: str) -> bool:
    """Whether a JWT says it is an ID token: ours are typed JWT, our access tokens at+jwt."""
    try:
        typ = jws.extract_compact(token.encode()).headers().get("typ")
    except (JoseError, ValueError):
        return False
    return typ == _ID_TOKEN_TYPE


def hint_keys(token: str) -> KeySet:
    """The key a JWT names by its kid, if it is one of ours not revoked: at most one."""
    try:
        kid = jws.extract_compact(token.encode()).headers().get("kid")
    except (JoseError, ValueError):
        return KeySet([])
    key = current_keyring().id_token_key(kid) if isinstance(kid, str) else None
    return KeySet([key] if key is not None else [])


def signed_by_a_deleted_key(token: str) -> bool:
    """Whether a JWT names a kid we no longer store (deleted by `tokens purge`, a day or so
    after the last token it signed expired): what it says can no longer be checked."""
    try:
        kid = jws.extract_compact(token.encode()).headers().get("kid")
    except (JoseError, ValueError):
        return False
    return isinstance(kid, str) and not current_keyring().holds(kid)


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
