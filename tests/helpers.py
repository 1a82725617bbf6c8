"""What many test modules share: JWT peeking, OAuth calls and checks, a browser sign-in flow.

Fixtures live in conftest.py; these are plain functions and classes, imported by name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jws
from joserfc.jwk import ECKey, Key
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tokenserver.sqlite_writers import WriterConnection

from .conftest import PASSWORD, Actions, LiveServer, RegisteredClient

ISSUER = "http://localhost:8000"  # the default issuer, as the tests' apps run
# Where our bearer routes' RFC 9728 metadata lives: the default audience is the issuer.
RESOURCE_METADATA = f"{ISSUER}/.well-known/oauth-protected-resource"
# RFC 6750 §3.1: a request with no bearer token at all gets no error code, only where to look.
BARE_CHALLENGE = f'Bearer realm="tokenserver", resource_metadata="{RESOURCE_METADATA}"'


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2), as JWTs and our cursors spell bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the server's own tests check the signature)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict[str, Any]:
    """A JWT's protected header, unverified."""
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def post_token(
    client: FlaskClient, oauth_client: RegisteredClient, method: str, **data: str
) -> Any:
    """POST /oauth/token authenticating the client with `method`."""
    auth = None
    if method == "client_secret_basic":
        auth = oauth_client.auth
    elif method == "client_secret_post":
        data = {**data, "client_id": oauth_client.client_id, "client_secret": oauth_client.secret}
    else:
        data = {**data, "client_id": oauth_client.client_id}
    return client.post("/oauth/token", data=data, auth=auth)


def refresh_grant(
    client: FlaskClient, oauth_client: RegisteredClient, token: str, **extra: str
) -> Any:
    """A refresh_token grant, with client_secret_basic (or `none` for a public client)."""
    method = "client_secret_basic" if oauth_client.secret else "none"
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return post_token(client, oauth_client, method, **data)


def assert_oauth_error(response: Any, status: int, error: str) -> None:
    """An RFC 6749 §5.2 error: status, code, a description, JSON."""
    assert response.status_code == status, response.json
    assert response.mimetype == "application/json"
    assert response.json["error"] == error
    assert response.json["error_description"]


def works(client: FlaskClient, access_token: str) -> bool:
    """Whether the bearer check accepts the token."""
    return client.get("/users/me", headers=Actions.bearer(access_token)).status_code == 200


class Prover:
    """A client's DPoP key, making proofs as RFC 9449 §4.2 describes (or deliberately not)."""

    def __init__(self, key: Key | None = None, alg: str = "ES256") -> None:
        self.key = key or ECKey.generate_key("P-256")
        self.alg = alg

    @property
    def jkt(self) -> str:
        """The RFC 7638 thumbprint, computed here by hand, not by the library under test."""
        public = self.key.as_dict(private=False)
        members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}.get(
            public["kty"], ("crv", "kty", "x")
        )
        canonical = json.dumps({m: public[m] for m in members}, separators=(",", ":"))
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(
        self,
        method: str,
        url: str,
        token: str | None = None,
        *,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        signer: Key | None = None,
        age: int = 0,
    ) -> str:
        protected = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.key.as_dict(private=False)}
        payload: dict[str, Any] = {
            "htm": method,
            "htu": url,
            "iat": int(time.time()) - age,  # seconds ago, when the proof is made
            "jti": secrets.token_urlsafe(16),
        }
        if token is not None:
            payload["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        protected |= header or {}
        payload |= claims or {}
        for name in drop:
            payload.pop(name, None)
        alg = protected["alg"]
        return jws.serialize_compact(
            protected, json.dumps(payload), signer or self.key, algorithms=[alg]
        )


REDIRECT = "https://app.example.com/callback"


LOOPBACK = "http://127.0.0.1/callback"


def pkce() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorization_request(
    client_id: str, challenge: str, /, **params: str | None
) -> dict[str, str]:
    """An authorization request (code, PKCE S256); a parameter given None is left out."""
    request = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile junk:read",
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **params,
    }
    return {name: value for name, value in request.items() if value is not None}


class Flow:
    """A browser (the test client's cookie jar) signing in for an app, step by step."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app = app
        self.client = client

    def register(
        self,
        *uris: str,
        public: bool = False,
        first_party: bool = False,
        scope: str | None = None,
        name: str = "Photo App",
        audiences: tuple[str, ...] = (),
        dpop_bound: bool = False,
    ) -> tuple[str, str | None]:
        from tokenserver.clients import ClientSpec, register_client

        spec = ClientSpec(
            name,
            public,
            scope=scope,
            redirect_uris=uris or (REDIRECT,),
            first_party=first_party,
            audiences=audiences,
            dpop_bound=dpop_bound,
        )
        with self.app.app_context():
            made, secret = register_client(spec)
            return made.client_id, secret

    def login(self, username: str = "alice", password: str = PASSWORD, next: str = "/account"):
        page = self.client.get("/login?" + urlencode({"next": next}))
        form = {"csrf_token": csrf_of(page.text), "username": username, "password": password}
        return self.client.post("/login", data={**form, "next": next})

    def authorize(self, client_id: str, challenge: str, /, **params: str | None):
        query = authorization_request(client_id, challenge, **params)
        return self.client.get("/oauth/authorize?" + urlencode(query))

    def consent(self, location: str, decision: str = "allow"):
        page = self.client.get(location)
        assert page.status_code == 200, page.text
        return self.client.post(
            location, data={"csrf_token": csrf_of(page.text), "decision": decision}
        )

    def code_for(self, client_id: str, challenge: str, **params: str | None) -> str:
        """Sign-in already done: authorize, allow if asked, and return the code."""
        response = self.authorize(client_id, challenge, **params)
        if response.headers["Location"].startswith("/consent"):
            response = self.consent(response.headers["Location"])
        query = query_of(response.headers["Location"])
        assert "code" in query, query
        return query["code"]

    def exchange(self, client_id: str, secret: str | None, code: str, verifier: str, **extra):
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            **extra,
        }
        data = {k: v for k, v in data.items() if v is not None}
        if secret is None:
            return self.client.post("/oauth/token", data={**data, "client_id": client_id})
        return self.client.post("/oauth/token", data=data, auth=(client_id, secret))


def password_login(live: LiveServer, oauth_client: RegisteredClient, **extra: str) -> Any:
    """A password grant for alice over HTTP."""
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD, **extra}
    return requests.post(f"{live.url}/oauth/token", data=data, auth=oauth_client.auth, timeout=10)


def race_refreshes(
    live: LiveServer, oauth_client: RegisteredClient, refresh_token: str, contenders: int
) -> list[requests.Response]:
    """Send the same refresh token from `contenders` threads at once."""
    start = threading.Barrier(contenders)
    responses: list[requests.Response] = []

    def contend() -> None:
        with requests.Session() as http:
            start.wait()
            responses.append(
                http.post(
                    f"{live.url}/oauth/token",
                    data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                    auth=oauth_client.auth,
                    timeout=30,
                )
            )

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


class HeldRequest:
    """A request sent all but its last body byte, so the gunicorn worker that took it waits."""

    def __init__(self, url: str, path: str, fields: dict[str, str], auth: str = "") -> None:
        body = urlencode(fields).encode()
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{auth}\r\n"
        )
        self.sock.sendall(head.encode() + body[:-1])
        self.rest = body[-1:]

    def finish(self) -> int:
        """Send the last byte and return the response status."""
        # The server may have answered (e.g. 429) and closed before reading the body.
        with contextlib.suppress(OSError):
            self.sock.sendall(self.rest)
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        return int(data.split(b" ", 2)[1])


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


REQUESTS = "tokenserver_http_requests_total"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, 0 when the series does not exist yet."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def verified(client: FlaskClient, token: str, audience: str | list[str]) -> dict[str, Any]:
    """The token's claims, its signature checked by PyJWT against our JWKS, its aud required."""
    import jwt as pyjwt

    keys = pyjwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").json)
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = pyjwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=ISSUER
    )
    return claims


def until_a_backend_waits_for_a_lock(conn: Any, waiter: threading.Thread) -> None:
    """Return once a PostgreSQL backend of this database waits for a lock, while `waiter`
    (the thread expected to wait) is still running."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    while True:
        # pg_stat_activity is read once per transaction unless its snapshot is dropped.
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        if conn.execute(waiting).scalar():
            return
        assert waiter.is_alive(), "it finished without waiting for the other transaction"
        assert time.monotonic() < deadline, "it never waited for the other transaction"
        time.sleep(0.01)  # polling for a state that will come, not waiting out a race


def run_behind(app: Flask, conn: Any, action: Callable[[], object]) -> threading.Thread:
    """Start `action` on a thread while `conn` (a SQLAlchemy connection) is in a write
    transaction; return the thread once `action` has finished or waits for that transaction:
    on PostgreSQL for a lock it holds (it must), on SQLite for the writers' lock. Join the
    thread after the transaction ends."""
    settled = threading.Event()

    def run() -> None:
        try:
            with app.app_context():
                action()
        finally:
            settled.set()

    racer = threading.Thread(target=run)
    if conn.dialect.name == "postgresql":
        _start_until_it_waits(racer, app.extensions["tokenserver.settings"].database_url)
        return racer
    holder: WriterConnection = conn.connection.dbapi_connection
    take = WriterConnection.take_writers_lock

    def take_noting_a_wait(connection: WriterConnection) -> None:
        if threading.current_thread() is racer and holder.writing:
            settled.set()  # about to wait: `conn`'s transaction holds the writers' lock
        take(connection)

    WriterConnection.take_writers_lock = take_noting_a_wait  # type: ignore[method-assign]
    try:
        racer.start()
        assert settled.wait(timeout=30), "it neither finished nor waited"
    finally:
        WriterConnection.take_writers_lock = take  # type: ignore[method-assign]
    return racer


def reset_queued_behind(app: Flask, database_url: str, password: str) -> threading.Thread:
    """Start an operator's password reset for alice on a thread; return it once PostgreSQL
    has it waiting for a lock another transaction holds (join it after releasing that)."""
    from tokenserver import accounts

    def reset() -> None:
        with app.app_context():
            accounts.reset_password("alice", password)

    resetting = threading.Thread(target=reset)
    _start_until_it_waits(resetting, database_url)
    return resetting


def _start_until_it_waits(thread: threading.Thread, database_url: str) -> None:
    """Start `thread` and return once PostgreSQL has it waiting for a lock."""
    thread.start()
    engine = create_engine(database_url)
    try:
        with engine.connect() as watching:
            until_a_backend_waits_for_a_lock(watching, thread)
    finally:
        engine.dispose()
