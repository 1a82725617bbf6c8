"""Operational routes: liveness, readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .errors import schema_missing
from .keys import current_keyring
from .store import schema

# The newest revision in migrations/versions: a constant, so that serving never loads alembic.
# test_migrations fails until a new migration's revision is written here.
SCHEMA_HEAD = "1e6c9b3f7a52"

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers (no database call, so it is the cost floor)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready: the database answers, its schema is at the migrations' head, and the current
    signing key opens under the configured key-encryption keys."""
    try:
        current = schema.version()
    except DBAPIError as exc:
        reason = "schema is not at head" if schema_missing(exc) else "database unreachable"
        return jsonify(status="unavailable", reason=reason), 503
    except SQLAlchemyError:
        return jsonify(status="unavailable", reason="database unreachable"), 503
    if current != SCHEMA_HEAD:
        return jsonify(status="unavailable", reason="schema is not at head"), 503
    try:
        sealed = current_keyring().unopenable()  # cached: a query at most every cache_seconds
    except SQLAlchemyError:
        return jsonify(status="unavailable", reason="database unreachable"), 503
    if sealed is not None:
        return jsonify(status="unavailable", reason="signing key cannot be opened"), 503
    return jsonify(status="ok", schema=current), 200
