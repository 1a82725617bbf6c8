"""Operational routes: liveness, readiness."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .extensions import db

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers (no database call, so it is the cost floor)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready: the database answers and its schema is at the migrations' head."""
    head = _migration_head()
    try:
        with db.engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return jsonify(status="unavailable", reason="database unreachable"), 503
    if current != head:
        return jsonify(status="unavailable", reason="schema is not at head"), 503
    return jsonify(status="ok", schema=current), 200


def _migration_head() -> str | None:
    head = current_app.extensions.get("tokenserver.migration_head")
    if head is None:
        config = current_app.extensions["migrate"].migrate.get_config()
        head = ScriptDirectory.from_config(config).get_current_head()
        current_app.extensions["tokenserver.migration_head"] = head
    return head
