"""The rules of the records kept for every issued token: rotation, reuse, revocation, liveness.

Their statements are in store/tokens/.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError
from joserfc import jws

from .. import accounts, audit
from ..config import current_settings
from ..digests import digest
from ..models import Client, Subject, User, utcnow
from ..store.tokens import ACCESS, REFRESH, issuing, lookups, revoking
from ..store.tokens.issuing import Issued
from . import dpop
from .resources import as_audience

# Refresh tokens are 43 characters; a much longer string cannot be one of ours.
_MAX_REFRESH_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class RefreshCredential:
    """A live refresh token being exchanged, as the refresh grant sees it."""

    family_id: str
    client_id: str
    user: Subject | None
    scope: str
    token_hash: str
    session_ends_at: datetime  # the login's absolute end (TOKENSERVER_SESSION_MAX_AGE)
    # Spent a moment ago, and presented again within TOKENSERVER_REFRESH_REUSE_GRACE.
    within_grace: bool = False
    resources: tuple[str, ...] = ()  # the login's RFC 8707 resources
    dpop_jkt: str | None = None  # the DPoP key the login is bound to (RFC 9449 §5)
    auth_time: datetime | None = None  # when the user signed in for the login, if known
    session_id: str | None = None  # the browser session they signed in with, if any

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope


def _may_be_ours(refresh_token: str) -> bool:
    # Ours are short URL-safe ASCII; anything else (even a lone surrogate) cannot match a digest.
    return refresh_token.isascii() and len(refresh_token) <= _MAX_REFRESH_TOKEN_LENGTH


def record_issued(
    token: dict[str, Any],
    claims: dict[str, Any],
    client: Client,
    user: User | Subject | None,
    refresh_ttl: int,
    parent: RefreshCredential | None = None,
    *,
    session_max_age: int | None = None,
    resources: list[str] | None = None,
    code_hash: str | None = None,
    dpop_jkt: str | None = None,
    session_id: str | None = None,
    auth_time: datetime | None = None,
    device_code_hash: str | None = None,
) -> str:
    """Store a token response's records (its access token, any refresh token); its family id.

    A `parent` refresh token, or the authorization code (`code_hash`) being exchanged, is
    spent in the same transaction: both happen or neither does, in one commit.
    The transaction is a Core one of its own, short and outside the ORM session, which a token
    grant has no other use for. A refresh token never outlives its login's session
    (`session_max_age` from the login; the app's setting when not given). A new login keeps
    the RFC 8707 `resources` it was granted, the bound on what its refreshes may ask for,
    and the DPoP key (`dpop_jkt`) its refresh tokens are bound to, if any; an unbound login
    refreshed with a key is bound to it in the same commit. A login approved in
    a browser session (a device's, `session_id`; a code's is read as the code is spent) is
    stored only while that session is live, and keeps that sign-in (`auth_time`, the session)
    for the id_tokens of its refreshes; a device's also only while its approval
    (`device_code_hash`) stands. A password login signs in as it is issued. A new login of a
    client that authenticated is stored only while the client still must (InvalidClientError
    if it was made public meanwhile).
    """
    if session_max_age is None:
        session_max_age = current_settings().session_max_age
    issued = datetime.fromtimestamp(claims["iat"], UTC)
    family_id = parent.family_id if parent is not None else secrets.token_hex(16)
    session_ends = parent.session_ends_at if parent else issued + timedelta(seconds=session_max_age)
    # A refresh token dies unused after refresh_ttl, and with its login's session in any case.
    refresh_ends = min(issued + timedelta(seconds=refresh_ttl), session_ends)
    records = _records(token, claims, family_id, parent, refresh_ends)
    login = None
    if parent is None:
        checked_hash = getattr(user, "checked_hash", None)
        login = issuing.NewLogin(
            family_id,
            client.client_id,
            None if user is None else user.id,
            issued,
            " ".join(resources or []),
            dpop_jkt,
            checked_hash,
            session_id,
            issued if checked_hash is not None else auth_time,
            device_code_hash,
            confidential=not client.is_public,
        )
    bind = None
    if parent is not None and parent.dpop_jkt is None and dpop_jkt is not None:
        # RFC 9449 §5: refreshed with a proof, an unbound login of a public client is bound to
        # the proof's key, or its next refresh token would be spendable without the key.
        bind = (family_id, dpop_jkt)
    try:
        outcome = issuing.store_issued(
            records,
            login=login,
            parent_hash=None if parent is None else parent.token_hash,
            reuse_grace=current_settings().refresh_reuse_grace,
            code=None if code_hash is None else (code_hash, family_id),
            bind=bind,
        )
    except issuing.ClientGone:
        raise InvalidClientError() from None
    if outcome is not Issued.STORED:
        _refuse(outcome, client, parent, login, user)
    return family_id


def _records(
    token: dict[str, Any],
    claims: dict[str, Any],
    family_id: str,
    parent: RefreshCredential | None,
    refresh_ends: datetime,
) -> list[dict[str, Any]]:
    """The rows of a token response: its access token and any refresh token (which dies at
    `refresh_ends`)."""
    issued = datetime.fromtimestamp(claims["iat"], UTC)
    records = [
        {
            "family_id": family_id,
            "kind": ACCESS,
            "jti": claims["jti"],
            "kid": signing_kid(token["access_token"]),
            "token_hash": None,
            "scope": claims["scope"],
            "issued_at": issued,
            "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
        }
    ]
    if "refresh_token" in token:
        records.append(
            {
                "family_id": family_id,
                "kind": REFRESH,
                "jti": None,
                "kid": None,
                "token_hash": digest(token["refresh_token"]),  # never the token itself
                # RFC 6749 §6: a rotated refresh token keeps the scope of the one it replaces.
                "scope": parent.scope if parent is not None else claims["scope"],
                "issued_at": issued,
                "expires_at": refresh_ends,
            }
        )
    return records


def _refuse(
    outcome: Issued,
    client: Client,
    parent: RefreshCredential | None,
    login: issuing.NewLogin | None,
    user: User | Subject | None,
) -> NoReturn:
    """The grant's error for records `store_issued` would not store, and why."""
    if outcome is Issued.CLIENT_PUBLIC:
        raise InvalidClientError()  # the credential it authenticated with is no more
    if outcome is Issued.CODE_SPENT:
        raise CodeSpentMeanwhile()
    if outcome is Issued.BOUND_ELSEWHERE:
        raise InvalidGrantError("The refresh token is bound to another DPoP key.")
    if outcome is Issued.PARENT_SPENT:
        assert parent is not None
        _reuse_detected(client, parent.family_id)
        raise InvalidGrantError("The refresh token is invalid, expired or spent.")
    # Disabled, a new password, or the code's browser session signed out, while signing in;
    # said as for any refused sign-in (no account-state oracle).
    assert outcome in (Issued.USER_DISABLED, Issued.SIGNED_OUT), outcome
    if login is not None and login.checked_hash is not None and user is not None:
        accounts.login_superseded(user)  # a password login, its success already audited
    raise InvalidGrantError("The grant is invalid, expired or revoked.")


class CodeSpentMeanwhile(InvalidGrantError):
    """Another request spent the authorization code between its lookup and this exchange."""

    def __init__(self) -> None:
        super().__init__("The grant is invalid, expired or revoked.")


def signing_kid(access_token: str) -> str | None:
    """The `kid` in the header of a token we have just signed."""
    kid = jws.extract_compact(access_token.encode()).headers().get("kid")
    return kid if isinstance(kid, str) else None


def record_exchanged(
    access_token: str, claims: dict[str, Any], subject_jti: str, client: Client
) -> bool:
    """Store a token exchanged (RFC 8693) for the access token `subject_jti`, as `client`'s,
    in that token's family.

    Revoking the subject token (or any token it was exchanged from), revoking the login, or
    disabling its user then kills the exchanged token too. False, and nothing stored, if the
    subject token has died meanwhile.
    """
    auds = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    record = {
        "parent_jti": subject_jti,
        "kind": ACCESS,
        "jti": claims["jti"],
        "kid": signing_kid(access_token),
        "scope": claims["scope"],
        "issued_at": datetime.fromtimestamp(claims["iat"], UTC),
        "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
        "client_id": client.client_id,
        "audience": " ".join(auds),
    }
    try:
        return issuing.store_exchanged(record)
    except issuing.ClientGone:
        raise InvalidClientError() from None  # the client was deleted since it authenticated


def find_refresh_token(
    token: str, client: Client, dpop_jkt: str | None
) -> RefreshCredential | None:
    """The live, unspent refresh token of `client`; presenting a spent one kills its family.

    Only reads: the token is spent when the new tokens are stored (see record_issued), so the
    write lock is held for the few statements of that commit, not across RSA signing. A token
    spent less than TOKENSERVER_REFRESH_REUSE_GRACE ago passes too (two tabs racing). A token
    bound to a DPoP key other than the request's (`dpop_jkt`) is refused, spent or not.
    """
    if not _may_be_ours(token):
        return None
    token_hash = digest(token)
    row = lookups.refresh_record(token_hash)
    if row is None:
        return None
    if row.client_id != client.client_id:
        # Another client's token: nothing to learn, nothing to revoke, but worth a line.
        audit.event(
            "token.wrong_client",
            client_id=client.client_id,
            owner_client_id=row.client_id,
            family_id=row.family_id,
        )
        return None
    if row.dpop_jkt is not None and row.dpop_jkt != dpop_jkt:
        # RFC 9449 §5: a bound refresh token is useless without its private key. Refused before
        # reuse detection, and nothing revoked: whoever stole a spent one, without the key,
        # must not be able to end the owner's login.
        raise InvalidGrantError(dpop.bound_elsewhere("refresh token", dpop_jkt))
    settings, now = current_settings(), utcnow()
    session_ends = row.family_created_at + timedelta(seconds=settings.session_max_age)
    grace = _within_grace(row.spent_at, settings.refresh_reuse_grace, now)
    if row.spent_at is not None and not grace:
        _reuse_detected(client, row.family_id)
        return None
    if row.revoked_at or row.family_revoked_at or min(row.expires_at, session_ends) <= now:
        return None
    return RefreshCredential(
        row.family_id,
        row.client_id,
        row.user,
        row.scope,
        token_hash,
        session_ends,
        grace,
        tuple(row.resources.split()),
        row.dpop_jkt,
        row.auth_time,
        row.session_id,
    )


def _within_grace(spent_at: datetime | None, grace: int, now: datetime) -> bool:
    """Whether a spent refresh token was spent less than `grace` seconds ago."""
    return spent_at is not None and grace > 0 and now - spent_at < timedelta(seconds=grace)


def _reuse_detected(client: Client, family_id: str) -> None:
    revoking.revoke_family(family_id)  # replay of a spent token: assume it was stolen
    audit.event("token.reuse_detected", client_id=client.client_id, family_id=family_id)


@dataclass(frozen=True)
class LiveToken:
    """A token that verified and is alive right now, with what introspection reports."""

    kind: str
    family_id: str
    client_id: str
    user: Subject | None
    scope: str
    issued_at: int
    expires_at: int
    jti: str | None = None
    audience: str | list[str] | None = None
    act: dict[str, Any] | None = None  # RFC 8693 §4.1: who acts for the subject
    dpop_jkt: str | None = None  # RFC 9449: the key the token is bound to (`cnf.jkt`)


def live_access_token(claims: dict[str, Any], kid: str) -> LiveToken | None:
    """A verified access token's record if it is unrevoked and its user still active.

    The record must be of this very token: signed under `kid`, with the scope and expiry it
    was issued with. Otherwise the `jti` of a live token would vouch for any claims signed by
    any key a worker still holds (a leaked key, revoked but cached for a few seconds more).
    """
    expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    row = lookups.live_access(claims["jti"], kid, claims["scope"], expires_at)
    if row is None:
        return None
    user = row.user
    if not _subject_active(user, row.client_id, claims):
        return None
    granted = row.resources if row.audience is None else row.audience
    if not _aud_granted(claims["aud"], granted.split()):
        return None
    return LiveToken(
        ACCESS,
        row.family_id,
        row.issued_to or row.client_id,
        user,
        claims["scope"],
        claims["iat"],
        claims["exp"],
        claims["jti"],
        claims["aud"],
        claims.get("act"),
        bound_jkt(claims),
    )


def bound_jkt(claims: dict[str, Any]) -> str | None:
    """The DPoP key thumbprint an access token of ours is bound to (`cnf.jkt`), if any."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


def _aud_granted(aud: Any, resources: list[str]) -> bool:
    """Whether `aud` is what this login could be issued: its RFC 8707 resources (or some of
    them, after a narrowing refresh), else the default audience."""
    granted = resources or [current_settings().audience]
    auds = aud if isinstance(aud, list) else [aud]
    return bool(auds) and all(value in granted for value in auds)


def _subject_active(user: Subject | None, client_id: str, claims: dict[str, Any]) -> bool:
    if user is None:
        # Only a client-credentials token has no user, and its subject is the client itself.
        return claims["sub"] == client_id
    # A disabled user's tokens die at once, whatever their expiry says.
    return not user.disabled and str(user.id) == claims["sub"]


def live_refresh_token(token: str) -> LiveToken | None:
    """The refresh token's record if it is unspent, unrevoked, unexpired and its user active."""
    if not _may_be_ours(token):
        return None
    session_max_age = timedelta(seconds=current_settings().session_max_age)
    token_hash = digest(token)
    row = lookups.live_refresh(token_hash, utcnow() - session_max_age)
    if row is None:
        return None
    # Its login may end first: TOKENSERVER_SESSION_MAX_AGE lowered since it was issued.
    expires_at = min(row.expires_at, row.session_started_at + session_max_age)
    return LiveToken(
        REFRESH,
        row.family_id,
        row.client_id,
        row.user,
        row.scope,
        int(row.issued_at.timestamp()),
        int(expires_at.timestamp()),
        jti=_refresh_token_id(token_hash),
        audience=as_audience(row.resources.split()),
        dpop_jkt=row.dpop_jkt,
    )


def _refresh_token_id(token_hash: str) -> str:
    """The `jti` introspection reports for an opaque refresh token (RFC 7662 §2.2): the same
    for every look at one token, and neither the token nor the digest it is stored under."""
    return digest("refresh-token-id\x00" + token_hash)[:32]


@dataclass(frozen=True)
class StoredToken:
    """A token's record in whatever state, for revocation."""

    kind: str
    family_id: str
    client_id: str
    jti: str | None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id


def stored_access_token(jti: str, kid: str) -> StoredToken | None:
    """The record of the access token with this `jti`, signed under `kid`, if any."""
    row = lookups.stored_access(jti, kid)
    return None if row is None else StoredToken(ACCESS, row.family_id, row.client_id, row.jti)


def stored_refresh_token(token: str) -> StoredToken | None:
    """The record of this refresh token, if any."""
    if not _may_be_ours(token):
        return None
    row = lookups.stored_refresh(digest(token))
    return None if row is None else StoredToken(REFRESH, row.family_id, row.client_id, None)
