"""The three grants we serve, each adjusted where Authlib's default disagrees with our contract."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidScopeError

from .. import accounts
from ..models import Subject
from .dpop import bound_key
from .records import RefreshCredential, find_refresh_token
from .resources import ResourceIndicators

# Authlib's grants accept only client_secret_basic; public clients need `none`, others `post`
# or their keys (private_key_jwt, RFC 7523).
_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


class PasswordGrant(ResourceIndicators, grants.ResourceOwnerPasswordCredentialsGrant):
    """RFC 6749 §4.3: username and password for tokens."""

    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> Subject:
        # Authlib answers bad credentials with invalid_request; RFC 6749 §5.2 says invalid_grant.
        user = accounts.authenticate(username, password)
        if user is None:
            raise InvalidGrantError("The username or password is wrong.")
        return user


class RefreshGrant(ResourceIndicators, grants.RefreshTokenGrant):
    """RFC 6749 §6 with rotation: each refresh token works once (RFC 9700 §4.14.2)."""

    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS
    # Authlib issues no new refresh token on refresh by default; rotation needs one every time.
    INCLUDE_NEW_REFRESH_TOKEN = True

    def granted_resources(self) -> list[str]:
        # RFC 8707 §2.2: a refresh may narrow to the login's resources, never widen them.
        return list(self.request.refresh_token.resources)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential:
        # Authlib reads here and revokes after saving, in separate commits (two refreshes could
        # both win); we only read here and spend with a conditional UPDATE in save_token.
        # A token bound to a DPoP key (RFC 9449 §5) is checked against this request's key there,
        # before a spent one could revoke its login.
        credential = find_refresh_token(refresh_token, self.request.client, bound_key())
        if credential is None:
            raise InvalidGrantError("The refresh token is invalid, expired or spent.")
        return credential

    def authenticate_user(self, refresh_token: RefreshCredential) -> Subject:
        # A disabled user's refresh tokens die with the rest (invalid_grant, not invalid_request).
        user = refresh_token.user  # read with the token, in the same statement
        if user is None or user.disabled:
            raise InvalidGrantError("The refresh token is invalid, expired or spent.")
        return user

    def issue_token(self, user: Subject, refresh_token: RefreshCredential) -> dict[str, Any]:
        # Authlib re-issues the scope granted at sign-in whatever the client may ask for now;
        # a client whose registered scope was narrowed since (RFC 7592) keeps only the rest.
        client = self.request.client
        # A scope of only delimiters asks for nothing, so it is the sign-in's: passed on as
        # asked, its "" would read to the generator as every scope the client may have.
        asked = " ".join((self.request.payload.scope or "").split())
        if asked:  # within the sign-in's scope (Authlib checked) and now the client's too
            scope = client.get_allowed_scope(asked)
        else:
            scope = client.still_registered(refresh_token.get_scope())
            if not scope:
                raise InvalidScopeError("No scope of this sign-in is left to this client.")
        token: dict[str, Any] = self.generate_token(
            user=user, scope=scope, include_refresh_token=self.INCLUDE_NEW_REFRESH_TOKEN
        )
        return token

    def revoke_old_credential(self, refresh_token: Any) -> None:
        """Nothing to do: save_token spent it in the same transaction as the new tokens."""


class ClientCredentialsGrant(ResourceIndicators, grants.ClientCredentialsGrant):
    """RFC 6749 §4.4: a confidential client acting for itself."""

    # RFC 6749 §4.4: confidential clients only, so no `none`.
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
