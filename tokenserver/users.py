"""/users: sign-up, the caller's own account and password."""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response, jsonify, url_for

from . import accounts
from .config import current_settings
from .errors import Forbidden
from .oauth.protect import current_user, require_oauth
from .payloads import read_fields

bp = Blueprint("users", __name__)

_SIGNUP_FIELDS = frozenset({"username", "password"})
_PASSWORD_FIELDS = frozenset({"current_password", "new_password"})


@bp.post("/users")
def create_user() -> tuple[Response, int, dict[str, str]]:
    """Register an account (JSON or form body)."""
    if not current_settings().registration_open:
        raise Forbidden("registration is closed", error="registration_closed")
    data = read_fields(_SIGNUP_FIELDS, allow_form=True)
    user = accounts.register(data.get("username"), data.get("password"))
    return jsonify(user.to_dict()), 201, {"Location": url_for("users.me")}


@bp.get("/users/me")
@require_oauth()
def me() -> Response:
    """The account the bearer token belongs to."""
    return jsonify(current_user().to_dict())  # Cache-Control: no-store comes from security.py


@bp.post("/users/me/password")
@require_oauth()
def change_password() -> tuple[str, int]:
    """Change the caller's password; every other login (refresh-token family) of theirs ends."""
    data = read_fields(_PASSWORD_FIELDS)
    accounts.change_password(
        current_user(),
        data.get("current_password"),
        data.get("new_password"),
        keep_family=current_token.family_id,
    )
    return "", 204
