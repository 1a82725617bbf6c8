"""Fixtures: app, client, runner on SQLite or PostgreSQL (TEST_DATABASE_URL), live gunicorn."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tokenserver import create_app
from tokenserver.config import Settings
from tokenserver.extensions import db

ROOT = Path(__file__).resolve().parent.parent
# Cheap hashing keeps the suite fast; test_passwords checks the production parameters.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
PASSWORD = "correct horse battery staple"


def _postgres_database(base_url: str) -> Iterator[str]:
    """A throwaway database on the server TEST_DATABASE_URL names, so runs never collide."""
    url = make_url(base_url)
    name = f"tokenserver_test_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database the whole session runs on, migrated to head."""
    base = os.environ.get("TEST_DATABASE_URL", "").strip()
    if base.startswith("postgresql"):
        gen = _postgres_database(base)
        url = next(gen)
    else:
        gen = None
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    app = create_app(Settings(database_url=url, **FAST_HASHING))
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    yield url
    if gen is not None:
        next(gen, None)


@pytest.fixture(scope="session")
def base_settings(database_url: str) -> Settings:
    """Settings every test app starts from."""
    return Settings(database_url=database_url, ratelimit_enabled=False, **FAST_HASHING).resolved()


def _clean(database_url: str) -> None:
    """Empty every table but the schema version and the signing keys (slow to make)."""
    keep = {"alembic_version", "signing_keys"}
    tables = [t for t in reversed(db.metadata.sorted_tables) if t.name not in keep]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(t.name for t in tables) + " CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def make_app(base_settings: Settings) -> Iterator[Any]:
    """A factory for apps with settings changed from the base; all cleaned afterwards."""
    apps: list[Flask] = []

    def factory(**changes: Any) -> Flask:
        app = create_app(replace(base_settings, **changes))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.engine.dispose()
    _clean(base_settings.database_url)


@pytest.fixture
def app(make_app: Any) -> Flask:
    """The application under test."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner for the app's commands."""
    return app.test_cli_runner()


@dataclass
class RegisteredClient:
    """An OAuth client made for a test, with its secret."""

    client_id: str
    secret: str | None

    @property
    def auth(self) -> tuple[str, str]:
        assert self.secret is not None
        return (self.client_id, self.secret)


class Actions:
    """Repeated steps: make users and clients, fetch tokens, call with a bearer token."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app = app
        self.client = client

    def user(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        response = self.client.post("/users", json={"username": username, "password": password})
        assert response.status_code == 201, response.json
        return response.json  # type: ignore[return-value]

    def oauth_client(
        self,
        name: str = "app",
        *,
        public: bool = False,
        grants: tuple[str, ...] = (),
        scope: str | None = None,
        introspect: bool = False,
    ) -> RegisteredClient:
        from tokenserver.cli import create_client

        grants = grants or ("password", "refresh_token", "client_credentials")
        if public:
            grants = tuple(g for g in grants if g != "client_credentials")
        with self.app.app_context():
            made, secret = create_client(name, public, grants, scope, introspect)
            return RegisteredClient(made.client_id, secret)

    def token(
        self,
        oauth_client: RegisteredClient,
        username: str = "alice",
        password: str = PASSWORD,
        **extra: str,
    ) -> Any:
        data = {"grant_type": "password", "username": username, "password": password, **extra}
        return self.client.post("/oauth/token", data=data, auth=oauth_client.auth)

    def login(self, username: str = "alice", scope: str | None = None) -> dict[str, Any]:
        """Register `username` and a client, and return a fresh token response."""
        self.user(username)
        oauth_client = self.oauth_client(f"{username}-app")
        extra = {"scope": scope} if scope else {}
        response = self.token(oauth_client, username, **extra)
        assert response.status_code == 200, response.json
        return {**response.json, "client": oauth_client}

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def actions(app: Flask, client: FlaskClient) -> Actions:
    """Helpers for the common steps of a test."""
    return Actions(app, client)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """Real gunicorn on loopback, configured through the environment like production."""

    def __init__(self, settings: Settings, workers: int = 2, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TOKENSERVER_DATABASE_URL": settings.database_url,
            "TOKENSERVER_ISSUER": settings.issuer,
            "TOKENSERVER_RATELIMIT_ENABLED": str(settings.ratelimit_enabled).lower(),
            "TOKENSERVER_ARGON2_TIME_COST": str(settings.argon2_time_cost),
            "TOKENSERVER_ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
            "TOKENSERVER_KEY_CACHE_SECONDS": str(settings.key_cache_seconds),
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LiveServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--access-logfile",
                "/dev/null",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)  # polling for start-up, not waiting out a race
        self.stop()
        raise RuntimeError("gunicorn did not start within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def live_server_factory(base_settings: Settings) -> Iterator[Any]:
    """Start gunicorn servers on loopback with extra environment; all stopped afterwards."""
    servers: list[LiveServer] = []

    def factory(workers: int = 2, **env: str) -> LiveServer:
        server = LiveServer(base_settings, workers, **env).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(live_server_factory: Any, app: Flask) -> LiveServer:
    """Two gunicorn workers serving the test database (and `app` cleans it afterwards)."""
    server: LiveServer = live_server_factory()
    return server
