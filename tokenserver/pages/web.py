"""What every page shares: the session and CSRF cookies, and the cross-site check on forms."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Response, g, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from .. import signin
from ..config import current_settings
from ..digests import new_secret
from ..oauth.codes import SignedIn
from ..store.sessions import Session

_SESSION = "tokenserver_session"
_CSRF = "tokenserver_csrf"
_MAX_COOKIE_LENGTH = 128


def _secure() -> bool:
    return current_settings().issuer.startswith("https://")


def _name(base: str) -> str:
    # The __Host- prefix pins a cookie to this host and path "/", over TLS only (RFC 6265bis).
    return f"__Host-{base}" if _secure() else base


def page(template: str, status: int = 200, **context: Any) -> Response:
    """A rendered page with its status."""
    response = Response(render_template(template, **context), status=status)
    response.mimetype = "text/html"
    return response


def refuse(status: int, title: str, message: str) -> HTTPException:
    """An HTML error page to raise."""
    return HTTPException(response=page("error.html", status, title=title, message=message))


# --- the browser session --------------------------------------------------------------------


def current_session() -> Session | None:
    """The live session of this browser (None once it ended, expired or its user is disabled)."""
    if "browser_session" not in g:
        g.browser_session = signin.current(_cookie(_SESSION))
    session: Session | None = g.browser_session
    return session


def signed_in() -> SignedIn | None:
    """The signed-in user as the authorization endpoint sees them."""
    session = current_session()
    if session is None:
        return None
    return SignedIn(session.user, session.id, session.auth_time)


def session_cookie() -> str | None:
    """The raw session cookie of this request, if any."""
    return _cookie(_SESSION)


def set_session_cookie(response: BaseResponse, secret: str) -> None:
    """Give the browser its new session: HttpOnly, SameSite=Lax, Secure on https."""
    response.set_cookie(
        _name(_SESSION),
        secret,
        max_age=current_settings().login_session_max_age,
        path="/",
        secure=_secure(),
        httponly=True,  # no script can read it
        samesite="Lax",  # not sent on cross-site POSTs
    )


def clear_session_cookie(response: BaseResponse) -> None:
    """Tell the browser to forget its session cookie."""
    response.delete_cookie(
        _name(_SESSION), path="/", secure=_secure(), httponly=True, samesite="Lax"
    )


def _cookie(base: str) -> str | None:
    value = request.cookies.get(_name(base))
    if value is None or len(value) > _MAX_COOKIE_LENGTH:
        return None
    return value


# --- CSRF -------------------------------------------------------------------------------------


def csrf_token() -> str:
    """The token every form carries: it must match this browser's CSRF cookie."""
    token = g.get("csrf_new") or _cookie(_CSRF)
    if not token:
        token = g.csrf_new = new_secret(32)
    return token


def keep_csrf_cookie(response: Response) -> Response:
    """Set the CSRF cookie if this response made the browser its first token."""
    token = g.get("csrf_new")
    if token:
        response.set_cookie(
            _name(_CSRF), token, path="/", secure=_secure(), httponly=True, samesite="Lax"
        )
    return response


def check_form() -> None:
    """Refuse a form post from another site, or without this browser's CSRF token (403).

    Double-submit: another site can make a browser post, but cannot read or set our cookie,
    so it cannot know the token. Origin and Sec-Fetch-Site stop the post before that.
    """
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        raise refuse(403, "Request refused", "This form was sent from another site.")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise refuse(403, "Request refused", "This form was sent from another site.")
    cookie, sent = _cookie(_CSRF), request.form.get("csrf_token", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode("utf-8", "replace")):
        raise refuse(
            403,
            "Form expired",
            "This form is out of date or was not sent from our page. Go back, reload and retry.",
        )
