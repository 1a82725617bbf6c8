"""/oauth/authorize, /consent and /oauth/logout: the browser's side of sign-in for an app."""

from __future__ import annotations

from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from flask import redirect, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response

from .. import signin
from ..oauth import authorize, freshness, pushed
from ..oauth.authorize import Authorization, BadAuthorizationRequest, Next, RedirectBack
from ..oauth.codes import SignedIn
from ..oauth.logout import needs_confirmation
from ..oauth.server import current_server
from ..payloads import given
from ..redirects import destination
from . import bp, web

# RP-Initiated Logout 1.0 §2: what a logout request may say, all a confirmation carries on.
_LOGOUT_PARAMETERS = frozenset(
    {"id_token_hint", "logout_hint", "client_id", "post_logout_redirect_uri", "state", "ui_locales"}
)


def _parameters() -> MultiDict[str, str]:
    """The authorization request's parameters: the query of a GET, the form body of a POST.

    OpenID Connect Core §3.1.2.1 requires both methods. A POST's query is ignored, as
    node-oidc-provider and Keycloak ignore it: a request never mixes two sources.
    """
    return request.form if request.method == "POST" else request.args


class _Request:
    """An authorization request as the browser brought it: its parameters, or a pushed one
    (RFC 9126) that its client_id and request_uri stand for."""

    def __init__(self, sent: MultiDict[str, str]) -> None:
        sent = given(sent)  # RFC 6749 §3.1: one sent without a value is as if left out
        # The browser session that brought it: one that answered a pushed request may again.
        signed_in = web.signed_in()
        self.session_id = signed_in.session_id if signed_in is not None else None
        try:
            self.pushed = pushed.resolve(sent, self.session_id)
            if self.pushed is None:
                pushed.check_not_required(sent)
        except BadAuthorizationRequest as exc:
            raise _not_valid(exc) from None
        self.parameters = sent if self.pushed is None else self.pushed.parameters

    @property
    def onward(self) -> MultiDict[str, str]:
        """What the browser carries on to /login and /consent: a pushed request's reference."""
        return self.parameters if self.pushed is None else self.pushed.reference

    def validated(self, status: int = 302) -> Authorization:
        """The request, or the page / redirect that refuses it."""
        since = (  # a stamp only _to_login makes vouches for a request that was not pushed
            self.pushed.pushed_at if self.pushed else freshness.since(self.parameters)
        )
        try:
            return authorize.validate(web.signed_in(), self.parameters, since)
        except BadAuthorizationRequest as exc:
            raise _not_valid(exc) from None
        except RedirectBack as exc:
            raise _redirect_exception(self.back(exc.location), status) from None

    def back(self, location: str) -> str:
        """`location` at the client, an error: the pushed request, if any, is answered."""
        self.answer("error")
        return location

    def answer(self, answer: pushed.Answer) -> None:
        """Mark a pushed request answered, before its code or error exists: by this browser
        session only, which may answer it again the same way (a double click, the form sent
        after Back)."""
        if self.pushed is not None:
            try:
                pushed.finish(self.pushed, self.session_id, answer)
            except BadAuthorizationRequest as exc:
                raise _not_valid(exc) from None


def _not_valid(exc: BadAuthorizationRequest) -> Exception:
    # RFC 6749 §4.1.2.1: an unverified client or redirect URI is told to the user only.
    return web.refuse(400, "This sign-in link is not valid", exc.description)


def _redirect_exception(location: str, status: int = 302) -> Exception:
    return HTTPException(response=redirect(location, status))


def _query(parameters: MultiDict[str, str]) -> str:
    return urlencode(list(parameters.items(multi=True)))


def _to_login(sent: _Request, status: int = 302) -> Response:
    """Send the user to sign in, then back to this request (as a GET).

    The way back keeps what sent the user here (prompt=login or select_account, max_age): a
    stamp of this moment, which the browser cannot forge, lets a sign-in since then meet it.
    A pushed request cannot be changed: its sign-in counts from the moment it was pushed.
    """
    parameters = sent.parameters
    if sent.pushed is not None:
        params = list(sent.onward.items(multi=True))
    else:
        params = freshness.way_back(parameters)
    back = "/oauth/authorize?" + urlencode(params)
    query = {"next": back}
    if parameters.get("login_hint") and sent.pushed is None:  # a pushed one stays off URLs
        query["login_hint"] = parameters["login_hint"]
    return redirect("/login?" + urlencode(query), status)


def _as_get(sent: _Request) -> Response:
    """A POSTed request without a session, sent on as a GET once its redirect URI is verified.

    A cross-site POST (from the app's page) carries no SameSite=Lax session cookie; the GET of
    a navigation does, so the session (and prompt=none) are judged there, not here.
    """
    try:
        authorize.validate(None, sent.parameters)
    except BadAuthorizationRequest as exc:
        raise _not_valid(exc) from None
    except RedirectBack:
        pass  # the GET answers it at the client's redirect URI, or finds the user signed in
    return redirect("/oauth/authorize?" + _query(sent.onward), 303)


def _refuse_head() -> None:
    # Flask answers HEAD with the GET view, which may issue a code or an error (and answer a
    # pushed request), or sign the user out, for a link checker that never follows it.
    if request.method == "HEAD":
        raise MethodNotAllowed(["GET", "POST"])


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize_endpoint() -> Response:
    """RFC 6749 §4.1.1 with PKCE: sign in, consent, then a code for the client."""
    _refuse_head()
    sent = _Request(_parameters())
    signed_in = web.signed_in()
    if signed_in is None and request.method == "POST":
        return _as_get(sent)
    status = 303 if request.method == "POST" else 302  # 303: the browser follows with a GET
    authorization = sent.validated(status)
    try:
        step = authorize.next_step(authorization, signed_in)
    except RedirectBack as exc:
        return redirect(sent.back(exc.location), status)
    if step is Next.LOGIN:
        return _to_login(sent, status)
    assert signed_in is not None  # past the sign-in step
    if step is Next.CONSENT:
        if sent.pushed is not None:
            return redirect("/consent?" + _query(sent.onward), status)
        onward = freshness.from_sign_in(sent.parameters, signed_in.auth_time)
        return redirect("/consent?" + urlencode(onward), status)
    sent.answer("code")
    return redirect(authorize.issue_code(authorization, signed_in), status)


def _consentable(signed_in: SignedIn) -> tuple[_Request, Authorization]:
    """The request, if it may be answered at /consent; else the login page or the client's error.

    /consent is reachable by URL: it checks what /oauth/authorize checked before sending the
    user here (max_age, id_token_hint), or typing its address would skip those checks.
    """
    sent = _Request(request.args)  # a POST's body holds only the decision
    authorization = sent.validated()
    try:
        step = authorize.next_step(authorization, signed_in, consenting=True)
    except RedirectBack as exc:
        raise _redirect_exception(sent.back(exc.location)) from None
    if step is Next.LOGIN:
        raise HTTPException(response=_to_login(sent))
    return sent, authorization


@bp.get("/consent")
def consent_form() -> Response:
    """Name the app and what it asks for in words; allow or deny."""
    _refuse_head()
    signed_in = web.signed_in()
    if signed_in is None:
        return redirect("/login?" + urlencode({"next": request.full_path}), 302)
    _sent, authorization = _consentable(signed_in)
    return web.page(
        "consent.html",
        client=authorization.client,
        destination=destination(authorization.redirect_uri),
        scopes=authorization.scopes,
        resources=authorization.resources,
        user=signed_in.user,
        action=request.full_path,
    )


@bp.post("/consent")
def consent() -> Response:
    """The user's answer: allow issues the code (and is remembered), deny tells the app."""
    web.check_form()
    signed_in = web.signed_in()
    if signed_in is None:
        return redirect("/login?" + urlencode({"next": request.full_path}), 303)
    sent, authorization = _consentable(signed_in)
    decision = request.form.get("decision")
    if decision == "allow":
        sent.answer("code")
        return redirect(authorize.allow(authorization, signed_in), 303)
    if decision == "deny":
        return redirect(sent.back(authorize.deny(authorization)), 303)
    raise web.refuse(400, "No decision", "Choose Allow or Deny.")


@bp.route("/oauth/logout", methods=["GET", "POST"])
def logout() -> Response:
    """RP-Initiated Logout 1.0: end the browser session, then back to the app if registered."""
    _refuse_head()  # a link checker's HEAD of an app's logout link would sign the user out
    server = current_server()
    try:
        end = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        raise web.refuse(400, "This sign-out link is not valid", error.description or "") from None
    if request.method == "POST" and not web.session_cookie() and "csrf_token" not in request.form:
        # As at /oauth/authorize: an app's cross-site POST carries no SameSite=Lax cookie and
        # would sign no one out while saying it had; the GET of a navigation carries it.
        return redirect("/oauth/logout?" + _query(request.values), 303)
    # Without a valid id_token_hint naming this user, anyone's page could sign them out.
    if needs_confirmation(end, web.current_session()):
        if request.method == "GET" or "csrf_token" not in request.form:
            # The answer is POSTed here with the request's parameters, whether they came in
            # the query of a GET or the body of a POST: confirmed, it returns to the app.
            carried = [
                (name, value)
                for name, value in request.values.items(multi=True)
                if name in _LOGOUT_PARAMETERS
            ]
            session = web.current_session()
            back_to = destination(end.redirect_uri) if end.redirect_uri else None
            return web.page(
                "logout.html",
                session=session,
                action=request.path,
                carried=carried,
                back_to=back_to,
            )
        web.check_form()
    secret = web.session_cookie()
    if secret:
        signin.sign_out(secret)
    response = server.create_endpoint_response("end_session", end)
    if response is None:
        response = web.page("signed_out.html")
    elif request.method == "POST" and response.status_code == 302:
        response.status_code = 303  # back to the app by GET, never a repeated POST (RFC 9700 §4.12)
    web.clear_session_cookie(response)
    return response
