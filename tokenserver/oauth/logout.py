"""OpenID Connect RP-Initiated Logout 1.0 on Authlib's end-session endpoint."""

from __future__ import annotations

from typing import Any

from authlib.oidc.rpinitiated import EndSessionEndpoint

from ..config import current_settings
from ..keys import ALGORITHM, current_keyring
from .query import QueryRequest


class LogoutEndpoint(EndSessionEndpoint):
    """Validates id_token_hint against our keys; post_logout_redirect_uri must be registered."""

    def create_endpoint_request(self, request: Any) -> Any:
        # The logout request comes as a GET query or a POST form (§2): the token endpoint's
        # body-only reading would not see a query.
        return QueryRequest(current_settings().issuer)

    def get_server_jwks(self) -> dict[str, Any]:
        return current_keyring().jwks()

    def get_algorithms(self) -> list[str]:
        return [ALGORITHM]

    def end_session(self, end_session_request: Any) -> None:
        """Nothing here: the logout page ends the browser session, where its cookie is."""
