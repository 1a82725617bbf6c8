"""/healthz and /readyz."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tokenserver.extensions import db

from .conftest import postgres_database


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_ok_at_head(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"


def test_readyz_503_when_schema_is_behind(app: Flask, client: FlaskClient) -> None:
    with app.app_context(), db.engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "schema" in response.json["reason"]
    finally:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": head})


def test_readyz_503_when_database_unreachable(make_app: Any) -> None:
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.is_json


def test_database_outage_is_json_503(make_app: Any) -> None:
    app = make_app(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = app.test_client().get("/users/me", headers={"Authorization": "Bearer a.b.c"})
    assert response.status_code in (401, 503)
    response = app.test_client().post(
        "/users", json={"username": "alice", "password": "correct horse battery staple"}
    )
    assert response.status_code == 503
    assert response.json["error"] == "service_unavailable"


@pytest.fixture
def unmigrated_url(base_settings: Any, tmp_path: Path) -> Iterator[str]:
    """A reachable database of the suite's kind with no schema at all."""
    if base_settings.database_url.startswith("postgresql"):
        created = postgres_database(base_settings.database_url)
        yield next(created)
        next(created, None)
    else:
        yield f"sqlite:///{tmp_path / 'empty.db'}"


def test_readyz_says_an_unmigrated_database_is_not_at_head(
    make_app: Any, unmigrated_url: str
) -> None:
    app = make_app(database_url=unmigrated_url)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["reason"] == "schema is not at head"
    with app.app_context():
        db.engine.dispose()


def test_requests_to_an_unmigrated_database_are_503_saying_so(
    make_app: Any, unmigrated_url: str
) -> None:
    app = make_app(database_url=unmigrated_url)
    client = app.test_client()
    signup = client.post("/users", json={"username": "alice", "password": "a long pass phrase"})
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=("some-client", "secret")
    )
    for response in (signup, token):
        assert response.status_code == 503, response.json
        assert response.json["error"] == "service_unavailable"
        assert "tokenserver db upgrade" in response.json["error_description"]
    with app.app_context():
        db.engine.dispose()
