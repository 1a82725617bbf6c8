"""tokenserver: a standalone OAuth2 token server. create_app() assembles it."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError

from . import browser_models  # noqa: F401  (its tables join the metadata migrations compare)
from .config import Settings
from .extensions import close_reader, db
from .sqlite_writers import WriterConnection

MIGRATIONS = str(Path(__file__).resolve().parent.parent / "migrations")


class TokenServer(Flask):
    """Flask, less a check it would make about eleven times a request."""

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Every view and hook here is synchronous (tests/test_wsgi.py holds it to that), so
        # Flask's inspection of each one for a coroutine, on every call, finds nothing.
        return func

    def make_default_options_response(self) -> Response:
        # RFC 9110 §15.3.5: an answer with no content is a 204, not an empty text/html page.
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(settings: Settings | None = None, *, migrations: bool = False) -> Flask:
    """Build the WSGI application from settings (read from the environment when not given).

    With `migrations`, Flask-Migrate is bound too (the `db` command, `flask_migrate.upgrade()`):
    the CLI and the tests ask for it; the served app does not, so workers never load alembic.
    """
    app = TokenServer(__name__)
    settings = (settings or Settings.from_env(instance_path=app.instance_path)).resolved(
        app.instance_path
    )
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.extensions["tokenserver.settings"] = settings
    if settings.is_sqlite:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        _create_private_sqlite_file(settings.database_url)

    db.init_app(app)
    app.teardown_appcontext(_end_session)  # registered after Flask-SQLAlchemy's: runs first
    if migrations:
        from flask_migrate import Migrate  # imports alembic: 12 MB a web worker has no use for

        Migrate(app, db, directory=MIGRATIONS, compare_type=True, render_as_batch=True)

    from . import (
        audit,
        cors,
        errors,
        guard,
        junk,
        limits,
        metrics,
        observability,
        openapi,
        ops,
        pages,
        security,
        users,
    )
    from .keys import KeyRing
    from .keywrap import KeyEncryptionError, KeyWrapper
    from .oauth import init_oauth
    from .passwords import Passwords
    from .store import replay

    app.extensions["tokenserver.passwords"] = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    )
    wrapper = KeyWrapper(settings.key_encryption_keys)
    with app.app_context():
        if settings.is_sqlite:
            event.listen(db.engine, "connect", _sqlite_pragmas)
        event.listen(db.engine, "handle_error", _read_only_connection_is_lost)
        _check_key_encryption(db.engine, wrapper)
        app.extensions["tokenserver.keyring"] = KeyRing(
            db.engine,
            settings.key_cache_seconds,
            settings.access_token_ttl,
            publish_seconds=settings.key_publish_seconds or 0,
            wrapper=wrapper,
        )
    app.extensions["tokenserver.keywrap"] = wrapper

    errors.register_error_handlers(app)
    app.register_error_handler(KeyEncryptionError, errors.keys_sealed)  # keywrap imports errors
    observability.init_app(app)
    security.init_app(app)
    cors.init_app(app)
    limits.init_app(app)
    guard.init_app(app)
    replay.init_app(app)
    audit.init_app(app)
    init_oauth(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(users.bp)
    app.url_map.converters["item_id"] = junk.ItemIdConverter  # before the rules that use it
    app.register_blueprint(junk.bp)
    app.register_blueprint(openapi.bp)
    pages.init_app(app)
    metrics.init_app(app)

    from .cli import register_commands

    register_commands(app)
    return app


def _create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite database file readable by its owner only (it holds every secret)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    # O_EXCL: an existing file keeps the mode its owner chose. SQLite gives its -wal and -shm
    # files the database file's mode. A folder that is missing, not a folder or not ours to
    # write to is SQLite's to report, in one line where it is opened, not a traceback here.
    with contextlib.suppress(OSError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _check_key_encryption(engine: Any, wrapper: Any) -> None:
    """Refuse to start when the configured key-encryption keys cannot open the signing keys."""
    from sqlalchemy.exc import SQLAlchemyError

    from .config import ConfigError
    from .keywrap import KeyEncryptionError, check_wrapping

    try:
        check_wrapping(engine, wrapper)
    except KeyEncryptionError as exc:
        raise ConfigError(str(exc)) from None
    except SQLAlchemyError:
        pass  # no schema yet, or no database: `db upgrade` and /readyz deal with that


def _engine_options(settings: Settings) -> dict[str, Any]:
    # Database errors are logged; their text must not carry the statement's values (hashes,
    # token digests, usernames).
    if settings.is_sqlite:
        # A long busy timeout lets concurrent writers from several workers queue, not fail.
        # Writers take turns at a lock that hands over at once (sqlite_writers.py); the busy
        # handler's long timeout still queues anything else writing to the file.
        connect_args = {"timeout": 30, "factory": WriterConnection}
        return {"hide_parameters": True, "connect_args": connect_args}
    return {
        "hide_parameters": True,
        "pool_pre_ping": True,  # drop connections that died with a database restart
        "pool_timeout": 5,  # an exhausted pool answers 503 soon rather than hanging
        "connect_args": {
            "connect_timeout": 3,  # an unreachable server fails the request in seconds
            # TCP keepalives: a server gone without a word (a crashed host, a partition) is
            # noticed in ~11 s, not after the kernel's two hours; statement bounds are set
            # for the web workers only, in gunicorn.conf.py (PGOPTIONS).
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        },
    }


def _end_session(_exc: BaseException | None) -> None:
    """End the request's reader and session even when the database died under them.

    Flask-SQLAlchemy's own teardown would let the failing ROLLBACK escape Flask, and gunicorn
    would answer a bare HTML 500 in place of the JSON 503 already rendered.
    """
    close_reader()
    try:
        db.session.remove()
    except DBAPIError as exc:
        db.session.registry.clear()  # its connection is invalidated; the pool reconnects later
        logging.getLogger(__name__).warning(
            "dropped a session whose connection failed: %s", exc.__class__.__name__
        )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL so readers never block the writer; foreign keys enforced; fsync on every commit."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: each commit is fsynced to the WAL before it returns, so a sign-up or revocation
    # answered 2xx survives a power cut. NORMAL in WAL mode survives a process crash only: the
    # last commits before a power cut may roll back, and a revoked token would live again.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# psycopg's SQLSTATE for a write in a read-only transaction (read_only_sql_transaction).
_PG_READ_ONLY = "25006"


def _read_only_connection_is_lost(context: ExceptionContext) -> None:
    """A write refused because the connection is read-only: replace it, and answer 503.

    SQLite opens a file it may not write read-only, and that connection stays read-only after
    the file is writable again; a PostgreSQL session started while the database was read-only
    (default_transaction_read_only, a primary demoted to a standby) keeps that too. Pooled,
    either refuses every write long after the database is back. Taken as a lost connection,
    it is dropped with the pool's other connections, which reconnect on their next use, and
    the request answers the outage's 503 rather than a 500.
    """
    exc = context.original_exception
    if isinstance(exc, sqlite3.Error):
        read_only = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY
    else:
        read_only = getattr(exc, "sqlstate", None) == _PG_READ_ONLY
    if read_only:
        context.is_disconnect = True
