"""private_key_jwt: clients authenticate with a JWT signed by their own key (RFC 7523 §2.2).

Authlib's JWTBearerClientAssertion does the work; this subclass supplies the keys, the
audiences and the single-use store, and tightens what our contract says more strictly.
"""

from __future__ import annotations

import time
import warnings
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import Key

from ..client_jwks import KeysUnavailable
from ..models import Client
from ..payloads import parse_json
from ..store import replay
from .client_keys import ALGORITHMS, ClientKeys

ASSERTION_TYPE = JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE
# Clock skew allowed on exp, nbf and iat (RFC 7519 §4.1.4: "usually no more than a few minutes").
LEEWAY = 60
# RFC 7523 §3 lets us refuse an exp "unreasonably far in the future": an assertion is made for
# one request, and its jti must be remembered until it expires.
MAX_LIFETIME = 300

# RFC 9864 renamed EdDSA to Ed25519; joserfc warns on each use of the old name, which we accept.
warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)


class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 client assertions as our contract checks them (one method: private_key_jwt)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, issuer: str, keys: ClientKeys) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY)
        self.issuer = issuer
        self.keys = keys

    def __call__(self, query_client: Any, request: Any) -> Client | None:
        client: Client | None = super().__call__(query_client, request)
        claimed = request.payload.data.get("client_id")
        # RFC 7521 §4.2: a client_id sent alongside must name the assertion's client.
        if client is not None and claimed is not None and claimed != client.client_id:
            raise InvalidClientError(description="client_id does not match the assertion")
        return client

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # Authlib's parser lets a payload nested thousands deep escape as a RecursionError.
        parts = unverified_parts(assertion)
        if parts is None:
            raise InvalidClientError(description="Invalid JWT assertion.")
        return parts

    def get_audiences(self) -> list[str]:
        # RFC 7523 §3: aud identifies the authorization server: its issuer or token endpoint;
        # RFC 9126 §2: or, for a pushed request, the endpoint it is pushed to.
        return [self.issuer, f"{self.issuer}/oauth/token", f"{self.issuer}/oauth/par"]

    def resolve_client_public_key(self, client: Client) -> Any:
        # A callable, so the key is picked by the assertion's own header (kid, alg) and a new
        # kid may refetch the client's jwks_uri.
        def resolve(token: Any) -> Key:
            try:
                return self.keys.key_for(client, token.headers())
            except KeysUnavailable as exc:
                raise InvalidClientError(description=_plain(str(exc))) from None

        return resolve

    def process_assertion_claims(self, assertion: Any, resolve_key: Any) -> dict[str, Any]:
        # Authlib lets joserfc's default algorithms through, HS256 among them: ours only.
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=_plain(f"bad assertion ({exc})")) from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        # Authlib's checks, plus a jti that must be present and not blank, and a short exp.
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True},
            sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=_plain(f"bad claims ({exc})")) from None
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="iss and sub must both be the client_id")
        if claims["exp"] > time.time() + MAX_LIFETIME:
            raise InvalidClientError(description="exp is too far in the future")
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="the assertion's jti was used before")

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # Kept until the assertion can no longer pass the exp check, leeway included.
        until = datetime.fromtimestamp(int(claims["exp"]) + self.leeway + 1, UTC)
        return replay.spend("client_assertion", claims["sub"], jti, until)


def _plain(text: str) -> str:
    """`text` with each character RFC 6749 §5.2 forbids in an error_description (a quote, a
    backslash, anything beyond printable ASCII) as "?": joserfc's messages quote the
    assertion's own header, which Authlib would refuse to carry, with a 500."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a client assertion, not yet verified; None if it is no JWT."""
    try:
        signed = jws.extract_compact(assertion.encode())
        claims = parse_json(signed.payload)
    except (JoseError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    return signed.headers(), claims
