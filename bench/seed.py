"""Seeding through the real API and the `tokenserver` command: clients, users, tokens, junk."""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from .server import tokenserver_command

# Every bench user shares one strong random password: logins succeed, so the per-account
# password guard (which a success resets) never throttles the password-grant route.
PASSWORD = f"bench {secrets.token_urlsafe(18)}"


@dataclass(frozen=True)
class ClientCredentials:
    """A registered client and its secret."""

    client_id: str
    client_secret: str

    @property
    def basic(self) -> str:
        """The value of an `Authorization: Basic` header for this client."""
        from base64 import b64encode

        pair = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + b64encode(pair).decode("ascii")


@dataclass
class Seeded:
    """What the routes need: clients, users, live access tokens."""

    app: ClientCredentials
    resource_server: ClientCredentials
    usernames: list[str] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    junk_items: int = 0
    # A browser sign-in client (code grant, loopback redirect) and its users' `openid` tokens.
    web: ClientCredentials | None = None
    openid_tokens: list[str] = field(default_factory=list)
    # A client authenticating with private_key_jwt (its EC key), when this build has them.
    keyed: KeyedClient | None = None


@dataclass(frozen=True)
class KeyedClient:
    """A client registered with a public key; it signs its own assertions (RFC 7523)."""

    client_id: str
    key: Any  # joserfc ECKey, private


def create_keyed_client(env: dict[str, str]) -> KeyedClient | None:
    """A client_credentials client with an EC P-256 key, or None if this build has no keys."""
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", auto_kid=True)
    jwks = json.dumps({"keys": [key.as_dict(private=False)]})
    made = _new_client_if_supported(
        env, "bench-keyed", "--grant", "client_credentials", "--jwks-file", "-", stdin=jwks
    )
    return KeyedClient(made["client_id"], key) if made else None


def client_assertions(base: str, keyed: KeyedClient, count: int) -> list[str]:
    """`count` fresh single-use assertions (ES256, a jti each, alive four minutes)."""
    from joserfc import jwt

    metadata = _expect(
        requests.get(f"{base}/.well-known/oauth-authorization-server", timeout=10), 200
    )
    now = int(time.time())
    claims = {"iss": keyed.client_id, "sub": keyed.client_id, "aud": metadata["token_endpoint"]}
    header = {"alg": "ES256", "kid": keyed.key.kid}
    return [
        jwt.encode(
            header,
            {**claims, "iat": now, "exp": now + 240, "jti": secrets.token_urlsafe(16)},
            keyed.key,
            algorithms=["ES256"],
        )
        for _ in range(count)
    ]


WEB_REDIRECT = "http://127.0.0.1/callback"


def create_web_client(env: dict[str, str]) -> ClientCredentials | None:
    """A web app with the code grant (and the password grant, to seed `openid` tokens fast).

    None when this build has no browser sign-in (its `clients create` has no --redirect-uri).
    """
    made = _new_client_if_supported(
        env,
        "bench-web",
        "--grant",
        "password",
        "--grant",
        "authorization_code",
        "--redirect-uri",
        WEB_REDIRECT,
    )
    return ClientCredentials(made["client_id"], made["client_secret"]) if made else None


def create_clients(env: dict[str, str]) -> tuple[ClientCredentials, ClientCredentials]:
    """An app (password + refresh grants) and a resource server that may introspect any token."""
    app = _new_client(env, "bench-app")
    resource_server = _new_client(
        env, "bench-resource-server", "--grant", "client_credentials", "--introspect"
    )
    return (
        ClientCredentials(app["client_id"], app["client_secret"]),
        ClientCredentials(resource_server["client_id"], resource_server["client_secret"]),
    )


def _new_client(env: dict[str, str], name: str, *options: str, stdin: str | None = None) -> Any:
    """`tokenserver clients create NAME OPTIONS --json`, as a dict."""
    made = tokenserver_command(env, "clients", "create", name, *options, "--json", stdin=stdin)
    return json.loads(made)


def _new_client_if_supported(
    env: dict[str, str], name: str, *options: str, stdin: str | None = None
) -> Any:
    """The same, or None where this build's `clients create` lacks an option used."""
    try:
        return _new_client(env, name, *options, stdin=stdin)
    except RuntimeError:
        return None


def _expect(response: requests.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.url}: {response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body


def _sign_up(base: str, username: str) -> int:
    response = requests.post(
        f"{base}/users", json={"username": username, "password": PASSWORD}, timeout=30
    )
    return int(_expect(response, 201)["id"])


def _log_in(base: str, app: ClientCredentials, username: str) -> str:
    response = requests.post(
        f"{base}/oauth/token",
        data={"grant_type": "password", "username": username, "password": PASSWORD},
        auth=(app.client_id, app.client_secret),
        timeout=30,
    )
    return str(_expect(response, 200)["access_token"])


def junk_available(base: str) -> bool:
    """Whether this server has the junk API (an unauthenticated GET is 401, not 404)."""
    return requests.get(f"{base}/junk", timeout=10).status_code != 404


def _add_junk(base: str, token: str, count: int) -> int:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        for n in range(count):
            item = {"name": f"seed item {n}", "description": "seeded by the benchmark " * 8}
            _expect(session.post(f"{base}/junk", json=item, timeout=30), 201)
    return count


def seed(
    base: str,
    app: ClientCredentials,
    resource_server: ClientCredentials,
    users: int,
    junk_per_user: int,
    with_junk: bool,
    web: ClientCredentials | None = None,
) -> Seeded:
    """Sign users up, log each in once, and give each some junk, all through the API."""
    seeded = Seeded(app, resource_server)
    run_id = secrets.token_hex(3)
    seeded.usernames = [f"bench-{run_id}-{n:04d}" for n in range(users)]
    # A few requests at a time keep both workers busy while each signs up or logs in
    # (each costs an argon2id hash with the production parameters).
    with ThreadPoolExecutor(max_workers=4) as pool:
        seeded.user_ids = list(pool.map(lambda name: _sign_up(base, name), seeded.usernames))
        seeded.access_tokens = list(
            pool.map(lambda name: _log_in(base, app, name), seeded.usernames)
        )
        if web is not None:
            seeded.web = web
            seeded.openid_tokens = list(
                pool.map(lambda name: _log_in(base, web, name), seeded.usernames)
            )
        if with_junk:
            counts = pool.map(lambda tok: _add_junk(base, tok, junk_per_user), seeded.access_tokens)
            seeded.junk_items = sum(counts)
    return seeded
