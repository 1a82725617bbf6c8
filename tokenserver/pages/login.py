"""/login: our sign-in form; the password guard and per-IP limits apply as at /oauth/token."""

from __future__ import annotations

from flask import redirect, request
from werkzeug.wrappers import Response

from .. import accounts, signin
from ..errors import seconds
from ..guard import Throttled
from ..redirects import local_path
from . import bp, web


@bp.get("/login")
def login_form() -> Response:
    """The sign-in form; `next` is where the user was going."""
    return _form(200)


def _form(
    status: int, error: str | None = None, username: str | None = None, wrong: bool = False
) -> Response:
    """The form; `wrong` marks its fields invalid (a throttled try's password may be right)."""
    return web.page(
        "login.html",
        status,
        next=local_path(_next()),
        username=username if username is not None else _hint(),
        error=error,
        wrong=wrong,
    )


def _hint() -> str:
    """The login_hint to fill in, if it could be a username at all.

    Anyone's link sets it: unchecked, it would put any text of any length (a right-to-left
    override that shows "alice" for another name, say) in the field the user signs in with.
    """
    hint = request.args.get("login_hint", "")
    return hint if accounts.is_username(hint) else ""


def _next() -> str | None:
    """Where the user was going: the form's `next`, else the one in the URL the form was sent to.

    Our form carries it as a hidden field; a client that posts the visible fields back to the
    `/login?next=...` address it was sent to still returns where it was going.
    """
    return request.form.get("next", request.args.get("next"))


@bp.post("/login")
def login() -> Response:
    """Check the password; on success start a new session and go where the user was going."""
    web.check_form()
    # Taken whole, as the token endpoint takes them (the body limit bounds them): the password
    # rules measure the normalised text, so a cut made before normalising could lock a valid
    # password out of this page while each try still counted as a wrong guess.
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    try:
        started = signin.sign_in(
            username, password, request.user_agent.string, web.session_cookie()
        )
    except Throttled as exc:
        response = _form(
            429, f"Too many attempts. Try again in {seconds(exc.retry_after)}.", username
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if started is None:
        # One message for any cause: no telling an unknown name from a wrong password. 400, as
        # a refused form field on /account is: a 401 must carry an HTTP authentication
        # challenge (RFC 9110 §15.5.2), and a form has none to offer.
        return _form(400, "That username and password do not match.", username, wrong=True)
    response = redirect(local_path(_next()), 303)
    web.set_session_cookie(response, started.secret)
    return response
