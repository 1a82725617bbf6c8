"""DPoP (RFC 9449) for the bench: key-bound logins and single-use proofs made up front."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import requests
from joserfc import jws
from joserfc.jwk import ECKey

from .seed import PASSWORD, ClientCredentials


def _proof(key: ECKey, method: str, url: str, token: str | None = None) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = {"htm": method, "htu": url, "iat": int(time.time()), "jti": secrets.token_hex(12)}
    if token is not None:
        digest = hashlib.sha256(token.encode()).digest()
        claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=["ES256"])


def issuer_of(base: str) -> str:
    """The issuer a proof's `htu` must name (not the loopback address the bench dials)."""
    response = requests.get(f"{base}/.well-known/oauth-authorization-server", timeout=30)
    return str(response.json()["issuer"])


def bound_logins(
    base: str, app: ClientCredentials, usernames: list[str]
) -> list[tuple[ECKey, str]]:
    """One P-256 key per user and an access token bound to it (token_type DPoP)."""
    issuer = issuer_of(base)
    logins = []
    for username in usernames:
        key = ECKey.generate_key("P-256")
        response = requests.post(
            f"{base}/oauth/token",
            data={"grant_type": "password", "username": username, "password": PASSWORD},
            auth=(app.client_id, app.client_secret),
            headers={"DPoP": _proof(key, "POST", f"{issuer}/oauth/token")},
            timeout=30,
        )
        body = response.json()
        if response.status_code != 200 or body.get("token_type") != "DPoP":
            raise RuntimeError(f"DPoP login failed: {response.status_code} {body}")
        logins.append((key, str(body["access_token"])))
    return logins


def proof_lines(
    issuer: str, logins: list[tuple[ECKey, str]], method: str, path: str, count: int
) -> list[str]:
    """`count` lines of "<token> <proof>", each proof fresh and used once (its jti is spent).

    Made just before the route runs: a proof's `iat` must be within a minute of its use.
    """
    lines = []
    for n in range(count):
        key, token = logins[n % len(logins)]
        lines.append(f"{token} {_proof(key, method, issuer + path, token)}")
    return lines
