"""id_token_hint: an ID token of ours, passed back to name a user (OpenID Connect Core §3.1.2.1)."""

from __future__ import annotations

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..config import current_settings
from ..keys import ALGORITHM, current_keyring


def is_id_token(token: str) -> bool:
    """Whether a JWT says it is an ID token: ours are typed JWT, our access tokens at+jwt."""
    try:
        typ = jws.extract_compact(token.encode()).headers().get("typ")
    except (JoseError, ValueError):
        return False
    return typ == "JWT"


def hinted_subject(hint: str, client_id: str) -> str | None:
    """The sub of an ID token we issued to this client, or None if the hint is not one.

    Its exp is not checked: a client passes back the ID token it was given, which may be old.
    """
    if not is_id_token(hint):  # our access tokens carry our signature too
        return None
    try:
        keys = KeySet.import_key_set(current_keyring().jwks())  # type: ignore[arg-type]
        claims = jwt.decode(hint, keys, algorithms=[ALGORITHM]).claims
    except (JoseError, ValueError):
        return None
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience or []
    if claims.get("iss") != current_settings().issuer or client_id not in audiences:
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) else None
