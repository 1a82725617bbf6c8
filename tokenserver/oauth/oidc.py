"""OpenID Connect's JSON routes: discovery and userinfo (Core 1.0 §5.3, Discovery 1.0 §4)."""

from __future__ import annotations

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response, jsonify

from ..config import current_settings
from .codes import user_info
from .metadata import server_metadata
from .protect import current_user, require_oauth_or_form

bp = Blueprint("oidc", __name__)


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0: the RFC 8414 document under its OpenID name."""
    response = jsonify(server_metadata(current_settings().issuer))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
@require_oauth_or_form("openid")
def userinfo() -> Response:
    """OpenID Connect Core §5.3: claims about the user of an access token with `openid`, sent
    in the Authorization header or, with POST, as a form's `access_token` (RFC 6750 §2.2)."""
    return jsonify(user_info(current_user(), current_token.scope))
