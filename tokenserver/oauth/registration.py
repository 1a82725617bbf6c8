"""RFC 7591 registration and RFC 7592 management over HTTP, as Authlib's endpoints.

Both hand every rule to clients.py (the CLI's rules, plus those for clients nobody vouched
for) and client_metadata.py (the JSON). Errors are raised in our own family, so each names its
field and is rendered like every other error.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7592 import ClientConfigurationEndpoint
from flask import request as flask_request

from .. import clients
from ..client_rules import InvalidClientMetadata
from ..clients import DynamicRegistration
from ..config import current_settings
from ..errors import APIError, InvalidRequest
from ..models import Client
from ..payloads import JSONTooDeep, RepeatedName, parse_json
from . import client_metadata
from .metadata import server_metadata
from .protect import REALM

# RFC 7592 §2.2: fields the server sets, which an update must not send.
_SERVER_FIELDS = (
    "registration_access_token",
    "registration_client_uri",
    "client_secret_expires_at",
    "client_id_issued_at",
)


def _bearer(missing: str) -> str:
    """The bearer token of the request; without one, RFC 6750 §3.1's bare challenge."""
    scheme, _, token = flask_request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        challenge = {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
        raise APIError(missing, status=401, error="invalid_token", headers=challenge)
    return token


def _json_body() -> Any:
    """The request's JSON document, or InvalidClientMetadata when it is not JSON."""
    if not flask_request.is_json:
        raise InvalidClientMetadata("the body must be application/json client metadata")
    try:
        # Depth-checked: Flask's parser lets a body nested thousands deep escape as a 500.
        return parse_json(flask_request.get_data(cache=True), unique=True)
    except JSONTooDeep:
        raise InvalidClientMetadata("the body is nested too deeply") from None
    except RepeatedName as exc:
        raise InvalidClientMetadata(exc.description) from None
    except ValueError:
        raise InvalidClientMetadata("the body is not valid JSON") from None


def _management(client_id: str, token: str) -> dict[str, str]:
    """RFC 7592 §3: where and with what the client manages its registration."""
    return {
        "registration_client_uri": f"{current_settings().issuer}/oauth/register/{client_id}",
        "registration_access_token": token,
    }


class RegistrationEndpoint(ClientRegistrationEndpoint):  # type: ignore[misc]
    """RFC 7591 §3, authorised by a single-use initial access token from the CLI."""

    def authenticate_token(self, request: Any) -> str:
        token = _bearer("An initial access token is required.")
        if not clients.initial_access_token_usable(token):
            raise clients.invalid_token(
                "The initial access token is unknown, expired or already used."
            )
        return token

    # Authlib's claims accept any URL scheme and grant; ours are checked in clients.py.
    def extract_client_metadata(self, request: Any) -> dict[str, Any]:
        return client_metadata.requested(_json_body())

    # The domain issues the client's id and secret when it stores the client.
    def generate_client_info(self, request: Any) -> dict[str, Any]:
        return {}

    def save_client(
        self, client_info: dict[str, Any], metadata: dict[str, Any], request: Any
    ) -> DynamicRegistration:
        spec = client_metadata.to_spec(metadata)
        return clients.register_dynamic_client(spec, request.credential)

    # The response is the client as registered (replacing what was asked), its secret once.
    def generate_client_registration_info(
        self, registration: DynamicRegistration, request: Any
    ) -> dict[str, Any]:
        body = client_metadata.describe(registration.client)
        if registration.secret is not None:
            body["client_secret"] = registration.secret
        body.update(_management(registration.client.client_id, registration.registration_token))
        return body

    def get_server_metadata(self) -> dict[str, Any]:
        return server_metadata(current_settings().issuer)


class _RegistrationToken:
    """A registration access token and the one client it manages."""

    def __init__(self, value: str, client: Client) -> None:
        self.value = value
        self.client = client

    def check_client(self, client: Client) -> bool:
        return client is self.client


class ConfigurationEndpoint(ClientConfigurationEndpoint):  # type: ignore[misc]
    """RFC 7592: read, replace or delete a client with its registration access token."""

    # The token is looked up together with the client of the URL: another client's token, a
    # CLI-made client (it has none) and an unknown client all get the same 401.
    def authenticate_token(self, request: Any) -> _RegistrationToken:
        token = _bearer("A registration access token is required.")
        client_id = (flask_request.view_args or {}).get("client_id", "")
        client = clients.managed_client(client_id, token)
        if client is None:
            raise clients.invalid_token(
                "The registration access token is not valid for this client."
            )
        return _RegistrationToken(token, client)

    def create_configuration_response(self, request: Any) -> Any:
        response = super().create_configuration_response(request)
        # RFC 9110 §9.3.2: HEAD is a GET without the body (Flask routes it here with GET);
        # Authlib answers only GET, PUT and DELETE and would leave HEAD a 500.
        if response is None and request.method == "HEAD":
            response = self.create_read_client_response(request.client, request)
        return response

    def authenticate_client(self, request: Any) -> Client:
        client: Client = request.credential.client
        return client

    def revoke_access_token(self, request: Any, token: Any) -> None:
        """Never reached: a token is accepted only with the client it manages."""

    def check_permission(self, client: Client, request: Any) -> bool:
        return True  # the client's own registration access token, checked above

    def introspect_client(self, client: Client) -> dict[str, Any]:
        return client_metadata.describe(client)

    def generate_client_registration_info(self, client: Client, request: Any) -> dict[str, str]:
        # The token stays the same across updates: a lost response must not lock the client out.
        return _management(client.client_id, request.credential.value)

    def delete_client(self, client: Client, request: Any) -> None:
        clients.delete_client(client.client_id)

    # Authlib's RFC 7592 §2.2 refusals name no field; these do.
    def create_update_client_response(self, client: Client, request: Any) -> Any:
        document = _json_body()
        if not isinstance(document, dict):
            raise InvalidClientMetadata("the body must be a JSON object of client metadata")
        sent = next((name for name in _SERVER_FIELDS if name in document), None)
        if sent is not None:
            raise InvalidRequest(f"'{sent}' is set by the server; leave it out of an update")
        if document.get("client_id") != client.client_id:
            raise InvalidRequest("'client_id' must be sent, and be this client's id")
        secret = document.get("client_secret")
        # Ours are base64url: a JSON string may hold a lone surrogate, which cannot be hashed.
        if "client_secret" in document and not (
            isinstance(secret, str) and secret.isascii() and client.check_client_secret(secret)
        ):
            raise InvalidRequest("'client_secret' does not match this client's secret")
        spec = client_metadata.to_spec(client_metadata.requested(document))
        updated, new_secret = clients.update_client(client.client_id, spec)
        status, body, headers = self.create_read_client_response(updated, request)
        if new_secret is not None:  # it became a secret client: its secret, shown once
            body["client_secret"] = new_secret
        return status, body, headers

    def update_client(self, client: Client, metadata: dict[str, Any], request: Any) -> Client:
        raise NotImplementedError  # create_update_client_response calls the domain itself

    def get_server_metadata(self) -> dict[str, Any]:
        return server_metadata(current_settings().issuer)
