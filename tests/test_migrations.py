"""Migrations: empty database to head on this backend, and the result equals the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, inspect, text

from tokenserver import create_app
from tokenserver.config import Settings
from tokenserver.extensions import db

from .conftest import FAST_HASHING, _postgres_database


def test_migrated_schema_matches_the_models(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "render_as_batch": True}
        )
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def _upgrade_from_empty(url: str) -> set[str]:
    app = create_app(Settings(database_url=url, **FAST_HASHING))
    with app.app_context():
        upgrade()
        upgrade()  # a second run at head is a no-op, not an error
        tables = set(inspect(db.engine).get_table_names())
        db.engine.dispose()
    return tables


def test_upgrade_takes_an_empty_database_to_head(base_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = base_settings.database_url
    if url.startswith("postgresql"):
        gen = _postgres_database(url)
        url = next(gen)
    else:
        gen = None
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        tables = _upgrade_from_empty(url)
        assert {"users", "clients", "signing_keys", "token_records", "junk_items"} <= tables
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        engine.dispose()
    finally:
        if gen is not None:
            next(gen, None)
