"""/account: change the password, see and end sessions and apps, sign out everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import urlencode

from flask import redirect, request
from werkzeug.wrappers import Response

from .. import passwords, signin
from ..errors import InvalidRequest
from ..guard import Throttled
from ..store.sessions import Session
from . import bp, web

_DONE = {
    "password": "Your password is changed. Every other sign-in has ended.",
    "session": "That session is signed out.",
    "app": "That app is signed out.",
}


def _session_or_login() -> Session | Response:
    session = web.current_session()
    if session is None:
        return redirect("/login?" + urlencode({"next": "/account"}), 303)
    return session


_BROWSERS = (
    ("Edg/", "Edge"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
)
_SYSTEMS = (
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
)


def describe_browser(user_agent: str) -> str:
    """A person's name for a browser: "Chrome on Linux" (the raw User-Agent means little)."""
    browser = next((name for mark, name in _BROWSERS if mark in user_agent), "A browser")
    system = next((name for mark, name in _SYSTEMS if mark in user_agent), None)
    return f"{browser} on {system}" if system else browser


@bp.get("/account")
def account() -> Response:
    """The signed-in user's account page."""
    session = _session_or_login()
    if isinstance(session, Response):
        return session
    return _page(session)


def _page(
    session: Session, status: int = 200, error: str | None = None, error_field: str | None = None
) -> Response:
    shown = signin.overview(session)
    return web.page(
        "account.html",
        status,
        user=session.user,
        current_id=session.id,
        sessions=shown.sessions,
        describe_browser=describe_browser,
        apps=shown.apps,
        done=_DONE.get(request.args.get("done", "")),
        error=error,
        error_field=error_field,
    )


def _account_form(view: Callable[[Session], Response]) -> Callable[[], Response]:
    """A form post of /account: cross-site and CSRF checks, then the signed-in user's session."""

    @functools.wraps(view)
    def wrapper() -> Response:
        web.check_form()
        session = _session_or_login()
        return session if isinstance(session, Response) else view(session)

    return wrapper


@bp.post("/account/password")
@_account_form
def change_password(session: Session) -> Response:
    """Change the password (the current one is checked as at sign-in)."""
    current, new = request.form.get("current_password", ""), request.form.get("new_password", "")
    if new != request.form.get("confirm_password", ""):
        return _page(session, 400, "The new passwords do not match.", "confirm_password")
    try:
        signin.change_password(session, current, new)
    except InvalidRequest as exc:
        return _page(session, 400, *_refusal(exc.description))
    except Throttled as exc:  # the password guard, as at sign-in: said here, not on a bare page
        response = _page(session, 429, exc.description, "current_password")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return redirect("/account?done=password", 303)


# The form's labels for the fields the API's messages name ("'new_password' must be ...").
_LABELS = {"current_password": "The current password", "new_password": "The new password"}
# An API reason said without its code, which means nothing to a person.
_PLAIN = {passwords.WEAK: passwords.WEAK_WORDS, passwords.OWN: passwords.OWN_WORDS}


def _refusal(description: str) -> tuple[str, str]:
    """A refused change in the words of the form, and the field it is about."""
    for field, label in _LABELS.items():
        named = f"'{field}' "
        if description.startswith(named):
            reason = description.removeprefix(named)
            return f"{label} {_PLAIN.get(reason, reason)}.", field
    return description, "current_password"  # "The current password is wrong."


@bp.post("/account/sessions/end")
@_account_form
def end_session(session: Session) -> Response:
    """Sign out one of the user's browser sessions."""
    target = request.form.get("session_id", "")
    signin.end_session(session, target)
    if target == session.id:
        return _signed_out()
    return redirect("/account?done=session", 303)


@bp.post("/account/apps/sign-out")
@_account_form
def sign_out_app(session: Session) -> Response:
    """Revoke every token one app holds for the user."""
    signin.sign_out_app(session, request.form.get("client_id", ""))
    return redirect("/account?done=app", 303)


@bp.post("/account/sign-out-everywhere")
@_account_form
def sign_out_everywhere(session: Session) -> Response:
    """End every session and revoke every token of the user, this browser's too."""
    signin.sign_out_everywhere(session)
    return _signed_out()


def _signed_out() -> Response:
    response = redirect("/login", 303)
    web.clear_session_cookie(response)
    return response
