"""OpenID Connect RP-Initiated Logout 1.0 on Authlib's end-session endpoint."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import request as flask_request
from joserfc.jwk import KeySet
from werkzeug.datastructures import MultiDict

from ..config import current_settings
from ..keys import ALGORITHM
from ..payloads import given
from ..store.sessions import Session
from .hints import hint_keys, is_id_token, signed_by_a_deleted_key
from .query import QueryRequest


class LogoutEndpoint(EndSessionEndpoint):
    """Validates id_token_hint against our keys; post_logout_redirect_uri must be registered."""

    def validate_request(self, request: Any) -> EndSessionRequest:
        # Our access tokens are signed with the same keys: one handed to a resource server
        # must not pass as the hint that lets a link sign the user out unasked.
        hint = request.payload.data.get("id_token_hint")
        if hint and not is_id_token(hint):
            raise InvalidRequestError("The id_token_hint is not an ID token.")
        try:
            end = super().validate_request(request)
        except ValueError:
            # Authlib will not build an error whose description would echo characters RFC 6749
            # §5.2 forbids, as joserfc's refusal of an alg like RS"256 does: not an ID token.
            raise InvalidRequestError("The id_token_hint is not a valid ID token.") from None
        # §2: the OP MUST validate that it was the issuer. Our signature alone is not that: a
        # token our key signed before the issuer moved was issued by another issuer.
        if end.id_token_claims and end.id_token_claims.get("iss") != current_settings().issuer:
            raise InvalidRequestError("The id_token_hint was issued by another issuer.")
        return end

    def create_endpoint_request(self, request: Any) -> Any:
        # The logout request comes as a GET query or a POST form (§2): the token endpoint's
        # body-only reading would not see a query. One sent without a value is as if left out.
        parameters = _sent().copy()
        hint = parameters.get("id_token_hint")
        if hint and is_id_token(hint) and signed_by_a_deleted_key(hint):
            # An app's ID token may outlive the key that signed it, and refusing the link would
            # leave its user signed in here: with no hint left, the user is asked first.
            parameters.poplist("id_token_hint")
        return QueryRequest(current_settings().issuer, parameters)

    def get_server_jwks(self) -> KeySet:
        # Not the JWKS: the app's ID token may be older than every key published now. The
        # hint read here is the one validate_request checks (its parameters are these).
        return hint_keys(_sent().get("id_token_hint", ""))

    def get_algorithms(self) -> list[str]:
        return [ALGORITHM]

    def is_post_logout_redirect_uri_legitimate(
        self, request: Any, post_logout_redirect_uri: str, client: Any, logout_hint: Any
    ) -> bool:
        # Authlib returns to the app only with an id_token_hint. Without one the user is always
        # asked first (needs_confirmation), so this follows their answer, and only to a URI the
        # named client registered exactly: what an app that dropped its ID token expects.
        return True

    def end_session(self, end_session_request: Any) -> None:
        """Nothing here: the logout page ends the browser session, where its cookie is."""


def _sent() -> MultiDict[str, str]:
    """The logout request's parameters, those sent without a value left out (RFC 6749 §3.1):
    the hint whose keys are looked up is the one validated."""
    return given(flask_request.values)


def needs_confirmation(end: EndSessionRequest, session: Session | None) -> bool:
    """Whether to ask the user before signing this browser out (RP-Initiated Logout §2, §6).

    A valid id_token_hint only proves someone was given an ID token: anyone can get one of their
    own. It stands for the user's intent only when it was issued for this very browser session
    (§2: the OP MUST ask when the ID token does not belong to the current OP session), so an ID
    token left over from an earlier session cannot sign out a later one unasked.
    """
    if end.needs_confirmation or session is None:
        return end.needs_confirmation
    claims = end.id_token_claims
    return str(claims.get("sub")) != str(session.user.id) or claims.get("sid") != session.id
