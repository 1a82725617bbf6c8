"""The browser-facing blueprint: sign-in, consent, the authorization endpoint, /account, /device.

Thin views over signin.py and oauth/authorize.py; HTML from templates/, one stylesheet of ours.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Rule

from ..errors import APIError, error_response, http_error
from . import web

bp = Blueprint("pages", __name__)

# Words for each scope on the consent and account pages.
SCOPE_WORDS = {
    "openid": "Know who you are on this service",
    "profile": "See your username",
    "junk:read": "Read your junk items",
    "junk:write": "Create, change and delete your junk items",
}


@bp.after_request
def _private(response: Response) -> Response:
    return web.keep_csrf_cookie(response)  # no-store: security.py, as for every private route


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Any:
    # A page answers HTML: a per-IP limit's 429 page as rendered, any other error as a page.
    if exc.response is not None:
        return exc.response
    page = web.page("error.html", exc.code or 500, title=exc.name, message=exc.description or "")
    allow = dict(exc.get_headers()).get("Allow")
    if allow:
        page.headers["Allow"] = allow  # RFC 9110 §15.5.6: a 405 names the methods it takes
    return page


@bp.errorhandler(APIError)
def _api_error(exc: APIError) -> Response:
    if exc.status == 503:
        # An outage of a shared store (the sign-in guard's Redis) is answered as a failing
        # database is on every route, pages included: the API's JSON 503 (openapi/browser.py).
        return error_response(exc.status, exc.error, exc.description, exc.headers)
    response = web.page(
        "error.html", exc.status, title="Something went wrong", message=exc.description
    )
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def _method_not_allowed(exc: MethodNotAllowed) -> Any:
    """A method a page's address does not take: that page's error page, not the API's JSON.

    Routing fails before any blueprint is known. A browser meets this when it reopens the
    address of a form's answer (/account/password after a refused change) by GET.
    """
    rule = _rule_taking(list(exc.valid_methods or ()))
    if rule is None or not rule.endpoint.startswith(f"{bp.name}."):
        return http_error(exc)
    request.url_rule = rule  # the page's handler, headers (our stylesheet's CSP) and no-store
    return _http_error(exc)


def _rule_taking(methods: list[str]) -> Rule | None:
    """The rule this request's address matches by a method it takes."""
    adapter = current_app.create_url_adapter(request)
    if not methods or adapter is None:
        return None
    try:
        rule, _arguments = adapter.match(method=methods[0], return_rule=True)
    except HTTPException:
        # Matched again, the address may ask for a redirect (`/account//password`) or refuse a
        # WebSocket upgrade: raised in an error handler, that would be a 500. The API's 405.
        return None
    return rule


def init_app(app: Flask) -> None:
    """Register the pages and their template globals."""
    from . import account, authorize, device, login  # noqa: F401 (their routes join the blueprint)

    app.jinja_env.globals.update(csrf_token=web.csrf_token, scope_words=SCOPE_WORDS)
    app.register_blueprint(bp)
    app.register_error_handler(MethodNotAllowed, _method_not_allowed)
