"""Resource indicators (RFC 8707): `resource` picks the access token's `aud`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from authlib.oauth2 import OAuth2Error
from flask import g

from ..config import current_settings
from ..models import Client
from ..resource_uris import same_resource, uri_problem


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: a resource that is malformed, unknown, or wider than the grant."""

    error = "invalid_target"


def requested(data: Any, client: Client) -> list[str]:
    """The `resource` values of a request, each well-formed and registered for `client`, or
    our own routes' audience, which every token gets when it names none (so naming it, as a
    client that read our RFC 9728 metadata does, asks for nothing wider)."""
    own = current_settings().audience
    values: list[str] = []
    for value in data.getlist("resource"):
        if uri_problem(value):
            raise InvalidTargetError("'resource' must be an absolute URI without a fragment.")
        # Our audience as a URL parser may respell it (`http://host` read back as `http://host/`,
        # as some MCP clients send what our metadata names): the token still gets our `aud`.
        if same_resource(value, own):
            value = own
        elif value not in client.audience_list:
            raise InvalidTargetError("The resource is not one this client may ask for.")
        if value not in values:
            values.append(value)
    return values


class ResourceIndicators:
    """A token grant's RFC 8707 check; `granted` is the original grant's resources, if bound."""

    request: Any

    def granted_resources(self) -> list[str] | None:
        """The resources of the grant being exchanged (a code, a refresh token); None if new."""
        return None

    def validate_token_request(self) -> None:
        super().validate_token_request()  # type: ignore[misc]
        asked = requested(self.request.payload.data, self.request.client)
        granted = self.granted_resources()
        if granted is not None and not within(asked, granted):
            raise InvalidTargetError("The resource is wider than the original grant.")
        # The login keeps the original grant's resources; this token gets the narrowed ones.
        self.request.resources = asked if granted is None else granted
        bind_audience(asked or (granted or []))


def within(asked: list[str], granted: list[str]) -> bool:
    """RFC 8707 §2.2: whether a token request narrows its grant's resources; a grant that named
    none was for our own routes' audience."""
    return set(asked) <= audiences(granted)


def audiences(resources: Iterable[str]) -> set[str]:
    """Where tokens for `resources` are good: those named, or our own routes' audience when
    none is (so naming that audience and naming none are the same)."""
    return set(resources) or {current_settings().audience}


def bind_audience(resources: list[str]) -> None:
    """The `aud` of the token this request issues; Authlib's generator is not given the request."""
    g.token_resources = resources


def bound_audience() -> str | list[str] | None:
    """The `aud` bound for this request's token (see as_audience)."""
    return as_audience(g.get("token_resources") or [])


def as_audience(resources: list[str]) -> str | list[str] | None:
    """Resources as an `aud` claim: one, several, or None (the default audience)."""
    if not resources:
        return None
    return resources[0] if len(resources) == 1 else resources
