"""/users: sign-up and the caller's own account."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from . import accounts, audit
from .config import current_settings
from .errors import Forbidden
from .oauth.protect import current_user, require_oauth
from .payloads import read_fields

bp = Blueprint("users", __name__)

_SIGNUP_FIELDS = frozenset({"username", "password"})


@bp.post("/users")
def create_user() -> tuple[Response, int, dict[str, str]]:
    """Register an account (JSON or form body)."""
    if not current_settings().registration_open:
        raise Forbidden("registration is closed", error="registration_closed")
    data = read_fields(_SIGNUP_FIELDS, allow_form=True)
    user = accounts.register(data.get("username"), data.get("password"))
    audit.event("user.created", user_id=user.id, username=user.username)
    return jsonify(user.to_dict()), 201, {"Location": url_for("users.me")}


@bp.get("/users/me")
@require_oauth()
def me() -> Response:
    """The account the bearer token belongs to."""
    return jsonify(current_user().to_dict())  # Cache-Control: no-store comes from security.py
