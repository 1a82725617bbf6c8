"""Signing in on our pages: browser sessions, and what a signed-in user does at /account.

The password check is accounts.authenticate, so the per-account guard, the dummy hash for
unknown names and the disabled switch apply exactly as at the token endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import accounts, audit
from .config import current_settings
from .store import clients, codes, consents, devices, sessions, transaction
from .store.sessions import Session, SessionInfo
from .store.tokens import lookups, revoking
from .store.tokens.lookups import SignedInApp


@dataclass(frozen=True)
class NewSession:
    """A browser session just started: its cookie secret (shown to the browser only)."""

    secret: str
    session_id: str


def sign_in(
    username: str, password: str, user_agent: str, previous: str | None
) -> NewSession | None:
    """A new session if the password is right (the previous one, if any, ends: rotation).

    Raises guard.Throttled, without checking the password, when the account is throttled.
    """
    user = accounts.authenticate(username, password)
    if user is None:
        return None
    if previous:
        sign_out(previous)  # a cookie planted before sign-in never becomes a session (fixation)
    started = sessions.start(user, current_settings().login_session_max_age, user_agent)
    if started is None:
        accounts.login_superseded(user)  # disabled, or a new password, since the check
        return None
    secret, session_id = started
    audit.event("session.started", user_id=user.id, session_id=session_id)
    return NewSession(secret, session_id)


def current(secret: str | None) -> Session | None:
    """The live session of this cookie, if any (ended, expired or disabled user: None)."""
    return sessions.find(secret) if secret else None


@dataclass(frozen=True)
class Overview:
    """What /account shows: the user's live browser sessions and the apps they signed in to."""

    sessions: list[SessionInfo]
    apps: list[SignedInApp]


def overview(session: Session) -> Overview:
    """The signed-in user's sessions and apps."""
    return Overview(sessions.list_live(session.user.id), lookups.signed_in_apps(session.user.id))


def sign_out(secret: str) -> None:
    """End the session of this cookie, if it is live."""
    session = sessions.find(secret)
    if session is not None:
        sessions.end(session.user.id, session.id)
        audit.event("session.ended", user_id=session.user.id, session_id=session.id)


def end_session(session: Session, session_id: str) -> bool:
    """End one of the signed-in user's sessions; False if it is not theirs or not live."""
    ended = sessions.end(session.user.id, session_id) > 0
    if ended:
        audit.event("session.ended", user_id=session.user.id, session_id=session_id)
    return ended


def sign_out_app(session: Session, client_id: str) -> None:
    """Revoke every token the user's sign-ins to one app hold, and forget the consent; codes
    and device approvals not yet exchanged for tokens die too, or they would bring some back."""
    if clients.find(client_id) is None:
        return  # no such app (a NUL in the id would be a 500 on PostgreSQL, not a no-op)
    user_id = session.user.id
    with transaction() as tx:
        # Codes first: an exchange that spends one first has stored its tokens by the time
        # the logins are revoked; one that comes after finds the code expired.
        codes.expire_unused(user_id, client_id, tx)
        devices.withdraw_approvals(user_id, tx, client_id=client_id)
        revoking.revoke_logins(user_id, client_id=client_id, tx=tx)
        consents.forget(user_id, client_id, tx)
    audit.event("app.signed_out", user_id=session.user.id, client_id=client_id)


def sign_out_everywhere(session: Session) -> None:
    """End every browser session of the user and revoke every token they hold, together: a
    failure part-way must not leave tokens alive behind a page that said they were ended."""
    with transaction() as tx:
        sessions.end(session.user.id, tx=tx)  # first: see sessions.end
        revoking.revoke_logins(session.user.id, tx=tx)
    audit.event("user.signed_out_everywhere", user_id=session.user.id)


def change_password(session: Session, current_password: str, new_password: str) -> None:
    """Set a new password; every other sign-in (sessions, apps' tokens) ends.

    The same rule as the API's (accounts.change_password): a wrong current password is
    refused and counts toward the password guard.
    """
    accounts.change_password(session.user, current_password, new_password, None, session.id)
