"""Fixtures: app, client, runner on SQLite or PostgreSQL (TEST_DATABASE_URL), live gunicorn."""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from sqlalchemy import create_engine, text

from bench.server import (
    Port,
    PortTaken,
    on_a_port_of_its_own,
    throwaway_postgres,
    wait_until_serving,
)
from deploy.cluster import node_command
from tokenserver import create_app
from tokenserver.config import Settings
from tokenserver.extensions import db
from tokenserver.observability import JSONFormatter
from tokenserver.openapi import build_document

ROOT = Path(__file__).resolve().parent.parent
# Cheap hashing keeps the suite fast; test_passwords checks the production parameters.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
PASSWORD = "correct horse battery staple"


def postgres_database(base_url: str) -> Iterator[str]:
    """A throwaway database on the server TEST_DATABASE_URL names, so runs never collide."""
    with throwaway_postgres(base_url, "tokenserver_test") as url:
        yield url


def migrated_database(base: str, sqlite_path: Path) -> Iterator[str]:
    """A new database at head: a throwaway one on the PostgreSQL server `base` names, if it
    names one, else an SQLite file at `sqlite_path`."""
    if base.startswith("postgresql"):
        gen = postgres_database(base)
        url = next(gen)
    else:
        gen = None
        url = f"sqlite:///{sqlite_path}"
    app = create_app(Settings(database_url=url, **FAST_HASHING), migrations=True)
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    yield url
    if gen is not None:
        next(gen, None)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database the whole session runs on, migrated to head."""
    base = os.environ.get("TEST_DATABASE_URL", "").strip()
    yield from migrated_database(base, tmp_path_factory.mktemp("db") / "test.db")


@pytest.fixture(scope="session")
def base_settings(database_url: str) -> Settings:
    """Settings every test app starts from."""
    return Settings(database_url=database_url, ratelimit_enabled=False, **FAST_HASHING).resolved()


def clean_database(database_url: str) -> None:
    """Empty every table but the schema version and the current signing key (slow to make)."""
    keep = {"alembic_version", "signing_keys"}
    tables = [t for t in reversed(db.metadata.sorted_tables) if t.name not in keep]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM signing_keys WHERE state != 'current'"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(t.name for t in tables) + " CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())
    engine.dispose()


@functools.cache
def _openapi(issuer: str) -> OpenAPI:
    """The service's OpenAPI document for an issuer, parsed once per session."""
    return OpenAPI.from_dict(build_document(issuer))


class _RequestAtIssuer(WerkzeugOpenAPIRequest):
    """A test request as the document sees it: addressed to the configured issuer."""

    def __init__(self, request: Any, issuer: str) -> None:
        super().__init__(request)
        self.issuer = issuer

    @property
    def host_url(self) -> str:
        return self.issuer + "/"

    @property
    def body(self) -> bytes:
        return b""  # the app has consumed the stream; only the response is checked


class OpenAPICheckedClient(FlaskClient):
    """A test client that fails the test when a response breaks the OpenAPI document."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        issuer = self.application.extensions["tokenserver.settings"].issuer
        request = _RequestAtIssuer(response.request, issuer)
        try:
            _openapi(issuer).validate_response(request, WerkzeugOpenAPIResponse(response))
        except (PathNotFound, OperationNotFound):
            pass  # not a documented operation: a test-only route, an unknown URL, a 405
        except OpenAPIError as exc:
            detail = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
            raise AssertionError(
                f"{request.method.upper()} {request.path} answered {response.status_code}, "
                f"which the OpenAPI document does not allow: {detail}"
            ) from exc
        return response


@pytest.fixture
def make_app(base_settings: Settings) -> Iterator[Any]:
    """A factory for apps with settings changed from the base; all cleaned afterwards."""
    apps: list[Flask] = []

    def factory(*, migrations: bool = False, **changes: Any) -> Flask:
        app = create_app(replace(base_settings, **changes), migrations=migrations)
        app.config["TESTING"] = True
        app.test_client_class = OpenAPICheckedClient
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.engine.dispose()
    clean_database(base_settings.database_url)


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
        audiences: tuple[str, ...] = (),
        dpop_bound: bool = False,
    ) -> RegisteredClient:
        from tokenserver.clients import ClientSpec, register_client

        grants = grants or ("password", "refresh_token", "client_credentials")
        if public:
            grants = tuple(g for g in grants if g != "client_credentials")
        with self.app.app_context():
            spec = ClientSpec(
                name,
                public,
                grants,
                scope,
                introspect,
                audiences=audiences,
                dpop_bound=dpop_bound,
            )
            made, secret = register_client(spec)
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


class LiveServer:
    """Real gunicorn on loopback, configured through the environment like production.

    Its port is a Port of its own from construction to stop(): started again after
    terminate() or kill(), it serves on the same port, which refuses connections meanwhile.
    """

    # Set before start(): its issuer is then its own URL, as a browser reaches it.
    own_issuer = False

    def __init__(
        self, settings: Settings, workers: int = 2, log_dir: Path | None = None, **env: str
    ) -> None:
        # Logs go to files, not pipes: a pipe nobody drains fills up and blocks the workers.
        self._temporary_logs = log_dir is None  # removed again by stop()
        self._log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tokenserver-live-"))
        self.env = {
            **os.environ,
            "TOKENSERVER_DATABASE_URL": settings.database_url,
            "TOKENSERVER_ISSUER": settings.issuer,
            "TOKENSERVER_RATELIMIT_ENABLED": str(settings.ratelimit_enabled).lower(),
            "TOKENSERVER_ARGON2_TIME_COST": str(settings.argon2_time_cost),
            "TOKENSERVER_ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
            "TOKENSERVER_KEY_CACHE_SECONDS": str(settings.key_cache_seconds),
            "WEB_CONCURRENCY": str(workers),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._port: Port | None = None
        self._use(Port())

    def _use(self, port: Port) -> None:
        """Serve on `port` (the previous one, if any, given back)."""
        if self._port is not None:
            self._port.release()
        self._port = port
        self.port = port.number
        self.url = f"http://127.0.0.1:{self.port}"
        self.error_log = self._log_dir / f"gunicorn-{self.port}.log"
        self.access_log = self._log_dir / f"gunicorn-{self.port}.access.log"
        self.env["PORT"] = str(self.port)

    def _log_end(self) -> str:
        return "\n".join(self.log_lines())[-2000:]

    def log_lines(self, which: str = "error") -> list[str]:
        """What gunicorn has written so far to its error log (stderr) or its access log."""
        path = self.access_log if which == "access" else self.error_log
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def start(self) -> LiveServer:
        """Start gunicorn and wait until it answers /healthz from its own socket. The first
        start moves to a fresh port if another process took this one; a later one (its
        address is known, e.g. to a balancer) raises PortTaken instead."""
        if self.process is None:
            on_a_port_of_its_own(self._start_once, self._use)
        else:
            self._start_once()
        return self

    def _start_once(self) -> None:
        if self.own_issuer:
            self.env["TOKENSERVER_ISSUER"] = self.url
        stderr = open(self.error_log, "ab")  # noqa: SIM115 (the child keeps it open)
        self.process = subprocess.Popen(
            [*node_command(self.address), "--access-logfile", str(self.access_log)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # a process group of its own, for kill()
        )
        stderr.close()
        try:
            wait_until_serving(self.process, self.port, seconds=30, failed=self._log_end)
        except PortTaken:
            # Not serving yet, and it could only fail to bind (after 5 s of gunicorn's retries).
            self.kill()
            raise
        except BaseException:
            self.terminate()
            raise

    @property
    def address(self) -> str:
        """host:port, as a load balancer names this server."""
        return f"127.0.0.1:{self.port}"

    def signal(self, signum: int) -> None:
        """Signal gunicorn's master: HUP reloads its workers, TERM stops it gracefully."""
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the master and every worker at once, as a crash of its host would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """Stop gracefully (TERM; in-flight requests finish) and wait; KILL if it hangs."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=35)  # gunicorn's graceful_timeout, and a little
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        """Stop gracefully, give the port back and remove temporary logs."""
        self.terminate()
        if self._port is not None:
            self._port.release()
        if self._temporary_logs:
            shutil.rmtree(self._log_dir, ignore_errors=True)


@pytest.fixture
def live_server_factory(base_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Start gunicorn servers on loopback with extra environment; all stopped afterwards.

    `TOKENSERVER_DATABASE_URL=...` among the environment serves another database.
    """
    servers: list[LiveServer] = []

    def factory(workers: int = 2, **env: str) -> LiveServer:
        server = LiveServer(base_settings, workers, tmp_path, **env)
        servers.append(server)  # stopped afterwards even if it fails to start
        return server.start()

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(live_server_factory: Any, app: Flask) -> LiveServer:
    """Two gunicorn workers serving the test database (and `app` cleans it afterwards)."""
    server: LiveServer = live_server_factory()
    return server


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the test Redis; its keys are deleted afterwards."""
    prefix = f"tokenserver-test-{secrets.token_hex(6)}"
    yield prefix
    delete_redis_keys(prefix)


def delete_redis_keys(prefix: str) -> None:
    """Delete every key under a test's prefix on the test Redis."""
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)
    connection.close()


@pytest.fixture
def frozen() -> Iterator[Any]:
    """The clock stopped at now; tests move it with .shift(seconds)."""
    with time_machine.travel(datetime.now(UTC), tick=False) as traveller:
        yield traveller


@pytest.fixture
def resource_server(actions: Actions) -> RegisteredClient:
    """A client that may introspect any token."""
    return actions.oauth_client("api", introspect=True)


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Any:
    """A function returning the audit events logged so far, as the JSON lines written."""
    caplog.set_level(logging.INFO, logger="tokenserver.audit")
    formatter = JSONFormatter()

    def logged(name: str | None = None) -> list[dict[str, Any]]:
        lines = [
            json.loads(formatter.format(record))
            for record in caplog.records
            if record.name == "tokenserver.audit"
        ]
        return [line for line in lines if name is None or line["event"] == name]

    return logged


@pytest.fixture
def flow(app: Flask, client: FlaskClient, actions: Actions) -> Any:
    """A browser signing in as alice (who exists) for an app, step by step."""
    from .helpers import Flow

    actions.user("alice")
    return Flow(app, client)


def raw_answer(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers (lower-cased names) and body answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return int(status_line.split(" ", 2)[1]), headers, body
