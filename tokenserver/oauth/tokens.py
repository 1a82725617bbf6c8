"""RFC 9068 JWT access tokens: signing them, and verifying one that is presented to us."""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import g
from joserfc import jws, jwt
from joserfc.errors import InvalidClaimError, JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jws import CompactSignature

from ..config import current_settings
from ..digests import new_secret
from ..keys import ALGORITHM, KeyRing, current_keyring
from ..models import Client, Subject, User
from .dpop import bound_key
from .media_types import typ_is
from .resources import bound_audience

# RFC 9068 §2.1: the media type of a JWT access token.
ACCESS_TOKEN_TYPE = "at+jwt"
# Ours are well under 1 KiB; anything far longer is not ours and not worth parsing.
_MAX_TOKEN_LENGTH = 4096
# Seconds another node's clock may run ahead of ours when it stamps `iat`.
_CLOCK_SKEW = 30
# 9999-12-31T23:59:59Z, the last second a datetime holds.
_LAST_DATE = 253_402_300_799


class TokenGenerator(JWTBearerTokenGenerator):
    """Signs access tokens with the current key and makes opaque refresh tokens."""

    def __init__(self, issuer: str, audience: str, access_ttl: int, keyring: KeyRing) -> None:
        # Authlib defaults to 10-day tokens and ignores OAUTH2_TOKEN_EXPIRES_IN; we pass our TTL.
        super().__init__(
            issuer,
            alg=ALGORITHM,
            refresh_token_generator=_new_refresh_token,
            expires_generator=functools.partial(_lifetime, access_ttl),
        )
        self.audience = audience
        self.keyring = keyring

    def get_jwks(self) -> KeySet:
        # One key in the set: joserfc signs with it and writes its `kid` into the header.
        return self.keyring.key_set()

    def get_audiences(
        self, client: Client, user: User | Subject | None, scope: str
    ) -> str | list[str]:
        # Authlib's default audience is the client; RFC 9068 §3 wants the resource servers:
        # the request's RFC 8707 resources, else ours.
        return bound_audience() or self.audience

    def get_jti(
        self, client: Client, grant_type: str, user: User | Subject | None, scope: str
    ) -> str:
        return secrets.token_urlsafe(18)

    def get_extra_claims(
        self, client: Client, grant_type: str, user: User | Subject | None, scope: str
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {"username": user.username} if user is not None else {}
        act = g.get("token_act")
        if act is not None:
            claims["act"] = act  # RFC 8693 §4.1: who acts for the subject
        jkt = bound_key()
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}  # RFC 9449 §6.1: bound to the proof's key
        return claims

    def generate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        token: dict[str, Any] = super().generate(*args, **kwargs)
        if bound_key() is not None:
            token["token_type"] = "DPoP"  # RFC 9449 §5: says the token is sender-constrained
        return token


@contextlib.contextmanager
def delegated(act: dict[str, Any], not_after: int) -> Iterator[None]:
    """While signing an exchanged token (RFC 8693): its `act` claim and latest `exp`.

    The generator is not given the request (as with resources.bind_audience); the binding
    ends with the block, so no later token in the same context inherits it. Signing raises
    TokenRejected if `not_after` leaves the token less than a second.
    """
    g.token_act, g.token_not_after = act, not_after
    try:
        yield
    finally:
        g.pop("token_act", None)
        g.pop("token_not_after", None)


def _lifetime(access_ttl: int, client: Client, grant_type: str) -> int:
    """Seconds the token this request issues lives: our TTL, cut to the bound not-after."""
    not_after = g.get("token_not_after")
    if not_after is None:
        return access_ttl
    # An exchanged token never outlives the token it was exchanged for, and is never issued
    # dead: a subject that expired since it was checked leaves it no second to live.
    left = not_after - int(time.time())
    if left < 1:
        raise TokenRejected("expired")
    return min(access_ttl, left)


def _new_refresh_token(**_: Any) -> str:
    return new_secret(32)


def issued_claims(access_token: str) -> dict[str, Any]:
    """The claims of a token this process has just signed (so it needs no verifying)."""
    claims: dict[str, Any] = json.loads(jws.extract_compact(access_token.encode()).payload)
    return claims


class TokenRejected(Exception):
    """A presented access token that is not a valid token of ours; `reason` is safe to show."""

    def __init__(self, reason: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason


class _AccessTokenClaims(jwt.JWTClaimsRegistry):
    """RFC 9068 §4 claim checks; `exp` is strict, `iat` may be a little ahead (node skew)."""

    def validate_iat(self, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value > self.now + _CLOCK_SKEW:
            raise InvalidClaimError("iat")

    def validate_exp(self, value: object) -> None:
        # We sign whole seconds within a date's range: a later `exp` would be a 500 where the
        # record lookup turns it into a datetime (only our key signs one, still a 401).
        if isinstance(value, bool) or not isinstance(value, int) or value > _LAST_DATE:
            raise InvalidClaimError("exp")
        super().validate_exp(value)


@dataclass(frozen=True)
class VerifiedToken:
    """A presented access token that verified: the `kid` it is signed under, and its claims."""

    kid: str
    claims: dict[str, Any]


def verify_access_token(
    token: str, keyring: KeyRing, issuer: str, audience: str | None
) -> VerifiedToken:
    """A valid, unexpired access token of ours; raises TokenRejected otherwise.

    `audience` None accepts any `aud` (introspection and revocation serve every resource
    server). Only RS256 under one of our `kid`s passes, which stops `alg: none`, HS256 signed
    with our public key (key confusion) and tokens signed by anyone else's key.
    """
    if len(token) > _MAX_TOKEN_LENGTH:
        raise TokenRejected()
    kid, claims = _verified(token, keyring, issuer, audience)
    # Only `exp` and the key can change the verdict on a cached token: check both on every use.
    # A key withdrawn (`keys revoke`, or retired and dropped) stops verifying what it signed,
    # even tokens this cache met while the key was still ours.
    if keyring.verification_key(kid) is None:
        raise TokenRejected()
    if claims["exp"] <= int(time.time()):
        raise TokenRejected("expired")
    return VerifiedToken(kid, dict(claims))


# This worker's cache of tokens whose signature and fixed claims have checked out, so a token
# used again skips the RSA verification. Bounded, and holding no state that can change:
# the key is looked up in the key ring, and revocation and the user's status asked of the
# database, on every request.
@functools.lru_cache(maxsize=4096)
def _verified(
    token: str, keyring: KeyRing, issuer: str, audience: str | None
) -> tuple[str, dict[str, Any]]:
    try:
        decoded = jwt.decode(token, key_resolver(keyring), algorithms=[ALGORITHM])
        # RFC 9068 §4: the `typ` header must say at+jwt, so no other JWT can pass as one.
        if not typ_is(decoded.header.get("typ"), ACCESS_TOKEN_TYPE):
            raise TokenRejected()
        _claims_registry(issuer, audience).validate(decoded.claims)
    except JoseError as exc:
        raise TokenRejected("expired" if exc.error == "expired_token" else "invalid") from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise TokenRejected() from None  # garbage that is not even a JWS
    return str(decoded.header["kid"]), dict(decoded.claims)


def verified_token(token: str, any_audience: bool = False) -> VerifiedToken:
    """A valid access token for this app's issuer; raises TokenRejected.

    Its `aud` must be our default audience (our own routes), or, with `any_audience`, anything
    (a token we issued for another resource server, RFC 8707).
    """
    settings = current_settings()
    audience = None if any_audience else settings.audience
    return verify_access_token(token, current_keyring(), settings.issuer, audience)


def key_resolver(keyring: KeyRing) -> Any:
    """For joserfc: the public key of the JWS's `kid`, if it is ours and the alg RS256."""

    def resolve(signature: CompactSignature) -> RSAKey:
        header = signature.headers()
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise TokenRejected()
        key = keyring.verification_key(kid)
        if key is None:
            raise TokenRejected()
        return key

    return resolve


def _claims_registry(issuer: str, audience: str | None) -> _AccessTokenClaims:
    required: Any = {"essential": True}
    return _AccessTokenClaims(
        iss={"essential": True, "value": issuer},
        aud=required if audience is None else {"essential": True, "value": audience},
        sub=required,
        exp=required,
        iat=required,
        jti=required,
        client_id=required,
        scope={"essential": True, "allow_blank": True},
    )


def is_jwt_shaped(token: str) -> bool:
    """Whether a presented token looks like one of our JWTs (three dot-separated parts)."""
    return token.count(".") == 2
