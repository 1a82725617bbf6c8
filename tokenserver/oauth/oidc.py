"""OpenID Connect's JSON routes: discovery and userinfo (Core 1.0 §5.3, Discovery 1.0 §4)."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response, jsonify

from ..config import current_settings
from ..keys import ALGORITHM
from .codes import user_info
from .protect import current_user, require_oauth

bp = Blueprint("oidc", __name__)


def browser_metadata(issuer: str) -> dict[str, Any]:
    """The members RFC 8414 and OpenID discovery share for browser sign-in."""
    return {
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "end_session_endpoint": f"{issuer}/oauth/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        # RFC 9207: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": True,
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "subject_types_supported": ["public"],
        "claims_supported": [
            "sub",
            "preferred_username",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "at_hash",
            "sid",
        ],
        "prompt_values_supported": ["none", "login", "consent"],
    }


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0: the RFC 8414 document under its OpenID name."""
    from .routes import server_metadata

    response = jsonify(server_metadata(current_settings().issuer))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
@require_oauth("openid")
def userinfo() -> Response:
    """OpenID Connect Core §5.3: claims about the user of an access token with `openid`."""
    return jsonify(user_info(current_user(), current_token.scope))
