"""/healthz and /readyz."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tokenserver.extensions import db


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
