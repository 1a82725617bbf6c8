"""DPoP (RFC 9449): verifying a request's proof, and the key a token request binds to."""

from __future__ import annotations

import functools
import hashlib
import hmac
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from math import isfinite
from typing import Any
from urllib.parse import unquote, urlsplit

from authlib.oauth2 import OAuth2Error
from flask import Flask, Response, g
from flask import request as flask_request
from joserfc import jwk, jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import Key
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

from ..client_jwks import MIN_RSA_BITS
from ..config import current_settings
from ..errors import protocol_step
from ..payloads import parse_json
from ..store import replay
from . import nonces
from .media_types import typ_is

# Asymmetric only: `none` and HS* would let anyone mint a proof (RFC 9449 §4.3 point 5).
ALGORITHMS = ("ES256", "ES384", "PS256", "RS256", "Ed25519", "EdDSA")
TYP = "dpop+jwt"
# Seconds a proof's `iat` may differ from our clock (RFC 9449 §11.1: a short window).
WINDOW = 60
_MAX_PROOF_LENGTH = 4096  # an RSA-4096 proof is under 2 KiB
_MAX_JTI_LENGTH = 256
_KEY_TYPES = frozenset({"EC", "RSA", "OKP"})
# Members that only a private (or symmetric) JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# The default registry refuses headers over 512 bytes, which an RSA `jwk` header exceeds;
# headers we do not know (none are critical) are ignored, as RFC 7515 §4 says.
_REGISTRY = jws.JWSRegistry(algorithms=ALGORITHMS, strict_check_header=False)
_REGISTRY.max_header_length = 2048
# RFC 9864 deprecates the name "EdDSA" for "Ed25519"; clients still send it, so say nothing.
warnings.filterwarnings("ignore", "EdDSA is deprecated", SecurityWarning)


class InvalidProof(Exception):
    """A DPoP proof we refuse; `reason` is safe to show, `error` is the code to answer."""

    error = "invalid_dpop_proof"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonceRequired(InvalidProof):
    """RFC 9449 §8-9: a proof without a fresh nonce of ours; the answer carries one."""

    error = "use_dpop_nonce"


class InvalidDPoPProofError(OAuth2Error):
    """RFC 9449 §5: the token endpoint's answer to a bad proof."""

    error = "invalid_dpop_proof"


class UseDPoPNonceError(OAuth2Error):
    """RFC 9449 §8: the token endpoint's answer to a proof without a fresh nonce (400)."""

    error = "use_dpop_nonce"


def refusal(exc: InvalidProof) -> OAuth2Error:
    """What the token endpoint (and /oauth/par) answers to a refused proof."""
    if isinstance(exc, NonceRequired):
        # RFC 9449 §8: a client's first request, or its first in a while, meets this as a
        # matter of course. Counted as a failure, a few clients behind one address would spend
        # its token-endpoint budget; and it is decided before the client or a grant is checked,
        # so no secret is being guessed (a nonce's MAC has 128 bits).
        protocol_step()
        return UseDPoPNonceError(exc.reason)
    return InvalidDPoPProofError(exc.reason)


@dataclass(frozen=True)
class _ProofKey:
    """A proof header's public key, its `alg` and its RFC 7638 thumbprint."""

    key: Key
    jkt: str


def _refuse(reason: str) -> InvalidProof:
    return InvalidProof(f"The DPoP proof is invalid: {reason}.")


# This worker's cache of proof headers already checked, by their encoded form: a client sends
# the same header (typ, alg, jwk) with every proof, so the key is parsed once. It holds no
# decision that can change; the signature, claims and jti are checked on every proof.
@functools.lru_cache(maxsize=1024)
def _proof_key(protected: str) -> _ProofKey:
    try:
        header = parse_json(urlsafe_b64decode(protected.encode("ascii")))
    except ValueError:  # UnicodeError and nesting too deep among them
        raise _refuse("its header is not JSON") from None
    if not isinstance(header, dict) or not typ_is(header.get("typ"), TYP):
        raise _refuse(f"its typ must be {TYP}")
    if header.get("alg") not in ALGORITHMS:
        raise _refuse("its alg is not one we accept")
    member = header.get("jwk")
    if not isinstance(member, dict) or member.get("kty") not in _KEY_TYPES:
        raise _refuse("its jwk header must be an EC, RSA or OKP public key")
    # A proof that carries its private key proves nothing: anyone who saw it can sign.
    if _PRIVATE_MEMBERS & member.keys():
        raise _refuse("its jwk header must not hold a private key")
    try:
        key = jwk.import_key(member)
    except (JoseError, ValueError, TypeError, KeyError):
        raise _refuse("its jwk header is not a valid key") from None
    if key.key_type == "RSA" and key.raw_value.key_size < MIN_RSA_BITS:  # type: ignore[union-attr]
        raise _refuse(f"an RSA key must have at least {MIN_RSA_BITS} bits")
    return _ProofKey(key, key.thumbprint())


def verify_proof(
    proof: str,
    method: str,
    url: str,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    *,
    nonce_required: bool = False,
) -> str:
    """Check one DPoP proof (RFC 9449 §4.3) and spend its `jti`; the key's thumbprint.

    `url` is the request's URI as the client addressed it (our issuer, not the hop from the
    proxy). At a resource, `access_token` must match the proof's `ath` and the proof must be
    signed by the key the token is bound to (`expected_jkt`). With `nonce_required`, the proof
    must carry a nonce we issued recently (RFC 9449 §8-9; NonceRequired if not). Raises
    InvalidProof.
    """
    if not proof or len(proof) > _MAX_PROOF_LENGTH or not proof.isascii():
        raise _refuse("it is not a JWS")
    try:
        signed = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
    except (JoseError, ValueError, TypeError):
        raise _refuse("it is not a JWS") from None
    proof_key = _proof_key(proof.split(".", 1)[0])
    if expected_jkt is not None and not hmac.compare_digest(proof_key.jkt, expected_jkt):
        # RFC 9449 §7: a stolen bound token with a proof from the thief's own key.
        raise _refuse("it is signed by a key other than the access token's")
    try:
        valid = jws.validate_compact(signed, proof_key.key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError):
        valid = False  # e.g. an `alg` that does not fit the key
    if not valid:
        raise _refuse("its signature does not verify under its jwk")
    claims = _payload(signed.payload)
    _check_claims(claims, method, url, access_token)
    # Before the jti is spent: a proof refused for its nonce changes nothing in the shared
    # store, so a client without a nonce costs no write (the retry is a new proof anyway).
    if nonce_required and not nonces.is_fresh(claims.get("nonce")):
        raise NonceRequired("The DPoP proof must carry the nonce in the DPoP-Nonce header.")
    # Single use across every worker and node (RFC 9449 §11.1): the shared store decides.
    expires_at = datetime.fromtimestamp(claims["iat"] + WINDOW + 1, UTC)
    if not replay.spend("dpop", proof_key.jkt, claims["jti"], expires_at):
        raise _refuse("its jti has been used before")
    return proof_key.jkt


def _payload(raw: bytes) -> dict[str, Any]:
    try:
        claims = parse_json(raw)
    except ValueError:  # UnicodeError and nesting too deep among them
        raise _refuse("its payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _refuse("its payload is not a JSON object")
    return claims


def _check_claims(claims: dict[str, Any], method: str, url: str, access_token: str | None) -> None:
    if claims.get("htm") != method:
        raise _refuse("its htm is not this request's method")
    htu = claims.get("htu")
    if not isinstance(htu, str) or _uri(htu) != _uri(url):
        raise _refuse("its htu is not this request's URI")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, (int, float)):
        raise _refuse("its iat is missing")
    # JSON may say NaN, which every comparison lets through, or an int no float can hold.
    if not (isfinite(iat) if isinstance(iat, float) else abs(iat) < 2**53):
        raise _refuse("its iat is not a time")
    if abs(datetime.now(UTC).timestamp() - iat) > WINDOW:
        raise _refuse("its iat is not within a minute of now")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH:
        raise _refuse("its jti is missing")
    if access_token is not None:
        ath = claims.get("ath")
        # A proof made for another token cannot be replayed with this one (RFC 9449 §4.3).
        if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(access_token)):
            raise _refuse("its ath is not the hash of this access token")


def _uri(value: str) -> tuple[str, str, str] | None:
    """A URI without query and fragment, compared after RFC 3986 §6.2.2-6.2.3 normalisation."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if port is not None and port != {"https": 443, "http": 80}.get(scheme):
        host = f"{host}:{port}"
    # Decoded, as the request's own path reaches us: `/users/%6De` is `/users/me` (§6.2.2.2);
    # then without dot segments: `/junk/../users/me` is `/users/me` too (§6.2.2.3).
    return scheme, host, _without_dot_segments(unquote(parts.path) or "/")


def _without_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 remove_dot_segments, for an absolute path (or an empty one)."""
    *segments, last = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == ".." and len(kept) > 1:  # never above the root
            kept.pop()
        elif segment not in (".", ".."):
            kept.append(segment)
    if last == ".." and len(kept) > 1:
        kept.pop()
    # A path ending in a dot segment names a directory: "/a/b/.." is "/a/".
    kept.append("" if last in (".", "..") else last)
    return "/".join(kept)


def token_hash(access_token: str) -> str:
    """The `ath` of an access token: base64url of its SHA-256 (RFC 9449 §4.2)."""
    digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
    return urlsafe_b64encode(digest).decode("ascii")


def request_proof(access_token: str | None = None, expected_jkt: str | None = None) -> str | None:
    """The key thumbprint of this request's valid DPoP proof, None if it sent none.

    Raises InvalidProof for a bad proof, or for more than one (RFC 9449 §4.3 point 1).
    """
    proofs = flask_request.headers.getlist("DPoP")
    if not proofs:
        return None
    # A WSGI server joins a repeated header's values with commas (PEP 3333), so two headers
    # arrive as one value with a comma, which no compact JWS holds.
    if len(proofs) > 1 or "," in proofs[0]:
        raise _refuse("only one DPoP header may be sent")
    settings = current_settings()
    # TLS usually ends at a proxy: the client signed the URI it used, which is our issuer's.
    url = settings.issuer + flask_request.path
    try:
        return verify_proof(
            proofs[0],
            flask_request.method,
            url,
            access_token,
            expected_jkt,
            nonce_required=settings.dpop_nonce,
        )
    finally:
        if settings.dpop_nonce:
            # Whatever the verdict, the answer carries the nonce to use next (see init_app).
            # Made after the check: a nonce under a key this worker had not loaded yet has
            # taught it that key, so the answer's is not one the other workers now refuse.
            g.dpop_nonce = nonces.issue()


def bind_token_request() -> None:
    """Check a token request's proof; its key binds the tokens issued (see bound_key)."""
    g.dpop_jkt = request_proof()


def bound_elsewhere(what: str, presented_jkt: str | None) -> str:
    """Why a grant bound to a DPoP key is refused: no proof sent, or one made with another key."""
    if presented_jkt is None:
        return f"The {what} is bound to a DPoP key: send a DPoP proof made with it."
    return f"The {what} is bound to another DPoP key."


def bound_key() -> str | None:
    """The thumbprint this request's tokens are bound to; Authlib's generator has no request."""
    jkt: str | None = g.get("dpop_jkt")
    return jkt


def _add_nonce(response: Response) -> Response:
    """RFC 9449 §8.2: every answer to a request whose proof we checked names the nonce to use
    next, refusal or success. Always the current one, not only near its expiry: one HMAC is
    cheaper than a client meeting use_dpop_nonce at a window's edge."""
    nonce: str | None = g.get("dpop_nonce")
    if nonce is not None:
        response.headers["DPoP-Nonce"] = nonce
    return response


def init_app(app: Flask) -> None:
    """Send DPoP-Nonce with the answers to requests whose proofs were checked."""
    app.after_request(_add_nonce)
