"""Token exchange (RFC 8693): a resource server swaps a user's token for a narrower one.

Our policy, which RFC 8693 §1 leaves to the server: the exchanging client is a confidential
client registered with the grant; the subject token (and any actor token) is a live access
token of ours that was issued for that client's use, that is aimed at one of the resources it
serves (one of its registered audiences; a token aimed at another service cannot be swapped by
an unrelated client); the new token is for targets among those audiences, with no more scope and
no longer life than the subject token, and lives in the subject's login (records.py), so it
dies with it, and with the subject token itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)

from .. import audit
from ..models import TOKEN_EXCHANGE, Client
from ..resource_uris import uri_problem
from . import records
from .grants import ClientCredentialsGrant
from .resources import InvalidTargetError, bind_audience
from .tokens import TokenRejected, delegated, issued_claims, verified_token

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Each exchange of an exchanged token nests one more actor; tokens must stay small (tokens.py).
MAX_ACTORS = 4
# Parameters RFC 8693 §2.1 allows once (`resource` and `audience` may repeat).
_SINGLE = ("subject_token", "subject_token_type", "actor_token", "actor_token_type", "scope")
# RFC 8693 §2.2.2: a subject or actor token "invalid for any reason, or unacceptable based on
# policy" MUST be answered invalid_request, so no refusal of one here is invalid_grant. One
# description whatever the reason: a client must not learn whether another service's token
# is alive (revoked, its login ended, its user disabled) from how it is refused.
_REFUSED_SUBJECT = "The subject token is invalid, expired, revoked or not for this client."
_REFUSED_ACTOR = "The actor token is invalid, expired, revoked or not for this client."


@dataclass(frozen=True)
class _Presented:
    """A subject or actor token that checked out: its claims and its live record."""

    claims: dict[str, Any]
    live: records.LiveToken


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    """RFC 8693 §2: an access token of ours for a narrower one aimed at another service."""

    GRANT_TYPE = TOKEN_EXCHANGE
    # Confidential clients only, as for client credentials: a resource server has a secret.
    TOKEN_ENDPOINT_AUTH_METHODS = ClientCredentialsGrant.TOKEN_ENDPOINT_AUTH_METHODS

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("This client may not use this grant type.")
        self.request.client = client
        data = self.request.payload.data
        _check_parameters(data)
        targets = _targets(data, client)
        subject = _subject(data, client)
        actor = _actor(data, client)
        self.request.user = subject.live.user
        self.request.subject = subject
        self.request.exchanged_scope = _narrowed_scope(self.request.payload.scope, subject, client)
        self.validate_requested_scope()  # a scope no client may have is invalid_scope
        self.request.act = _act(client, subject, actor)
        bind_audience(targets)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        subject: _Presented = self.request.subject
        try:
            with delegated(self.request.act, subject.claims["exp"]):
                token: dict[str, Any] = self.generate_token(
                    user=self.request.user,
                    scope=self.request.exchanged_scope,
                    include_refresh_token=False,  # RFC 8693 §2.2.1: the subject's login refreshes
                )
        except TokenRejected:
            raise InvalidRequestError(_REFUSED_SUBJECT) from None  # it expired since it was checked
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER

    def save_token(self, token: dict[str, Any]) -> None:
        # Not the server's save_token: the token joins the subject's login, not a new one.
        client: Client = self.request.client
        subject: _Presented = self.request.subject
        claims = issued_claims(token["access_token"])
        if not records.record_exchanged(
            token["access_token"], claims, subject.claims["jti"], client
        ):
            raise InvalidRequestError(_REFUSED_SUBJECT)  # it died since it was checked
        audit.event(
            "token.exchanged",
            client_id=client.client_id,
            user_id=subject.live.user.id if subject.live.user else None,
            username=subject.live.user.username if subject.live.user else None,
            family_id=subject.live.family_id,
            jti=claims["jti"],
            scope=claims["scope"],
            audience=claims["aud"],
            subject_jti=subject.claims["jti"],
            subject_client_id=subject.claims["client_id"],
            act=claims["act"],
        )


def _check_parameters(data: Any) -> None:
    """RFC 8693 §2.1: the subject token, of a type we take, each single parameter once."""
    for name in _SINGLE:
        if len(data.getlist(name)) > 1:
            raise InvalidRequestError(f"'{name}' may be given only once.")
    if not data.get("subject_token"):
        raise InvalidRequestError("'subject_token' is required")
    if data.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        raise InvalidRequestError(f"'subject_token_type' must be {ACCESS_TOKEN_TYPE}.")
    if data.get("actor_token") and data.get("actor_token_type") != ACCESS_TOKEN_TYPE:
        raise InvalidRequestError(f"'actor_token_type' must be {ACCESS_TOKEN_TYPE}.")
    if data.get("actor_token_type") and not data.get("actor_token"):
        raise InvalidRequestError("'actor_token_type' is given without 'actor_token'.")
    requested = data.get("requested_token_type")
    if requested and requested != ACCESS_TOKEN_TYPE:  # left out: an access token
        raise InvalidRequestError(f"'requested_token_type' must be {ACCESS_TOKEN_TYPE}.")


def _targets(data: Any, client: Client) -> list[str]:
    """RFC 8693 §2.1: `resource` and `audience` name the target, among the client's audiences."""
    resources = data.getlist("resource")
    for value in resources:
        if uri_problem(value):
            raise InvalidTargetError("'resource' must be an absolute URI without a fragment.")
    targets = list(dict.fromkeys([*resources, *data.getlist("audience")]))
    if not targets:
        raise InvalidRequestError("'resource' or 'audience' is required: the token's target.")
    if not set(targets) <= set(client.audience_list):
        raise InvalidTargetError("The target is not one this client may ask tokens for.")
    return targets


def _acceptable(token: str, client: Client, *, own: bool = False) -> _Presented | None:
    """A live access token of ours that this client may present: aimed at a resource it serves
    (or, if `own`, issued to it) and not bound to a DPoP key. What the token itself says is
    checked before whether it is still alive, so a token the client may not present is refused
    without the database ever being asked."""
    try:
        verified = verified_token(token, any_audience=True)  # signature, expiry, issuer
    except TokenRejected:
        return None
    claims = verified.claims
    if not (_for_client(claims, client) or (own and claims["client_id"] == client.client_id)):
        # A token that reached a service it was not aimed at stays where it was aimed.
        return None
    if "cnf" in claims:
        # A sender-constrained token (RFC 9449) is its key holder's alone, and an exchange
        # carries no proof of the key: as subject, swapping it for an unbound one would strip
        # that binding off; as actor, whoever merely holds it would act as its owner.
        return None
    # Unrevoked, its login alive, its user enabled, and the token the one its record was made for.
    live = records.live_access_token(claims, verified.kid)
    return _Presented(claims, live) if live is not None else None


def _for_client(claims: dict[str, Any], client: Client) -> bool:
    """Whether a token was aimed at a resource this client serves (one of its audiences)."""
    aud = claims["aud"]
    return bool(set(aud if isinstance(aud, list) else [aud]) & set(client.audience_list))


def _subject(data: Any, client: Client) -> _Presented:
    """The subject token: acceptable to this client, and a user's."""
    subject = _acceptable(data["subject_token"], client)
    # A client's own token (client credentials) has no user to act for.
    if subject is None or subject.live.user is None:
        raise InvalidRequestError(_REFUSED_SUBJECT)
    return subject


def _actor(data: Any, client: Client) -> _Presented | None:
    """The actor token, if any: live, and the client's own or aimed at a resource it serves."""
    if not data.get("actor_token"):
        return None
    actor = _acceptable(data["actor_token"], client, own=True)
    if actor is None:
        raise InvalidRequestError(_REFUSED_ACTOR)
    return actor


def _narrowed_scope(asked: str | None, subject: _Presented, client: Client) -> str:
    """The scope to issue: what was asked, within the subject's; else all the client may hold."""
    held = subject.claims["scope"].split()
    wanted = (asked or "").split()  # only delimiters ask for nothing, as no scope does
    if wanted:
        if not set(wanted) <= set(held):
            raise InvalidScopeError("The requested scope is wider than the subject token's.")
    else:
        wanted = [scope for scope in held if scope in client.scopes]
    if not wanted:
        # An empty scope would read as "everything the client may have" to the generator.
        raise InvalidScopeError("There is no scope of the subject token this client may hold.")
    return " ".join(dict.fromkeys(wanted))


def _act(client: Client, subject: _Presented, actor: _Presented | None) -> dict[str, Any]:
    """RFC 8693 §4.1: the client acts now; the actor token's subject and the subject token's
    own actors acted before it, nested in that order."""
    earlier: dict[str, Any] | None = subject.claims.get("act")
    if actor is not None and actor.claims["sub"] != client.client_id:
        earlier = {"sub": actor.claims["sub"], **({"act": earlier} if earlier else {})}
    act: dict[str, Any] = {"sub": client.client_id, **({"act": earlier} if earlier else {})}
    if _depth(act) > MAX_ACTORS:
        raise InvalidRequestError("The subject token has been exchanged too many times.")
    return act


def _depth(act: dict[str, Any]) -> int:
    depth = 0
    current: Any = act
    while isinstance(current, dict):
        depth, current = depth + 1, current.get("act")
    return depth
