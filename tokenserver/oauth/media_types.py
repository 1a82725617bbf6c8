"""The `typ` header of a JWS: a media type, compared as one (RFC 7515 §4.1.9)."""

from __future__ import annotations

_PREFIX = "application/"


def typ_is(typ: object, media_type: str) -> bool:
    """Whether a `typ` header names `media_type` (given as "at+jwt", say, in lower case).

    Media types are compared case-insensitively (RFC 2045 §5.1), and "application/" may be
    left off a `typ` (RFC 7515 §4.1.9): "application/DPoP+JWT" names dpop+jwt too.
    """
    return isinstance(typ, str) and typ.lower().removeprefix(_PREFIX) == media_type
