"""The OpenAPI operations of browser sign-in: our HTML pages and OpenID Connect's JSON routes.

Pages answer HTML, errors included (README "Browser sign-in": an unverified redirect URI gets
a page, never a redirect); redirects are 302/303 with a Location.
"""

from __future__ import annotations

from typing import Any

from ..oauth.pushed import LIFETIME
from .components import ERRORS, json_response, ref, with_dpop_nonce
from .paths import BEARER_ERRORS, bearer

Doc = dict[str, Any]

_HTML = {"text/html": {"schema": {"type": "string"}}}
_REDIRECT = {"description": "Redirect", "headers": {"Location": ref("headers", "Location")}}


def _html(description: str) -> Doc:
    return {"description": description, "content": _HTML}


def _page(
    op_id: str, summary: str, ok: dict[int, str], redirects: tuple[int, ...] = (), **extra: Any
) -> Doc:
    """A page: HTML answers (errors too), and the redirects it may send."""
    responses: Doc = {str(status): _html(text) for status, text in ok.items()}
    for status in redirects:
        responses[str(status)] = _REDIRECT
    for status, text in (
        (400, "Bad request"),
        (403, "Cross-site or without the CSRF token"),
        (413, "The body is larger than the configured maximum, on every page"),
        (429, "Too many attempts; see Retry-After"),
    ):
        responses.setdefault(str(status), _html(text))
    # A page that reaches a failing database gets the API's JSON 503, as every route does.
    responses.setdefault("503", ref("responses", "Unavailable"))
    return {
        "operationId": op_id,
        "summary": summary,
        "tags": ["pages"],
        "security": [{}],
        **extra,
        "responses": responses,
    }


def _query(name: str, description: str, required: bool = False) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_AUTHORIZE_PARAMETERS = [
    _query("response_type", "code; required unless request_uri is given", False),
    _query("client_id", "The client's id", True),
    _query(
        "request_uri",
        "RFC 9126: what /oauth/par answered; with client_id it stands for the pushed request, "
        "and every other parameter is ignored. Unknown, expired, another client's or answered "
        "in another browser session: a page, never a redirect (the session that answered it may "
        "answer it again). Any other request_uri is request_uri_not_supported",
    ),
    _query("redirect_uri", "A registered redirect URI; optional when exactly one is registered"),
    _query("scope", "Space-separated scopes"),
    _query("state", "Returned unchanged"),
    _query(
        "resource",
        "RFC 8707: a registered audience the tokens will be aimed at (repeatable); bound into "
        "the code. An unknown or malformed one is redirected back as invalid_target",
    ),
    _query(
        "dpop_jkt",
        "RFC 9449 §10: the thumbprint of the DPoP key whose proof must come with the code's "
        "exchange",
    ),
    _query("code_challenge", "PKCE (RFC 7636): required unless request_uri is given"),
    _query("code_challenge_method", "S256 (plain is refused); required with code_challenge"),
    _query("nonce", "OpenID Connect: copied into the id_token"),
    _query(
        "prompt",
        "none, login, consent or select_account (signs in again); none stands alone; any other "
        "value is invalid_request",
    ),
    _query("max_age", "Whole seconds since sign-in beyond which the user signs in again"),
    _query(
        "login_hint",
        "A username to fill in on the sign-in page; a hint that cannot be a username fills in "
        "nothing",
    ),
    _query(
        "id_token_hint",
        "An id_token we issued to this client (expired is fine); naming a user other than the "
        "one signed in is login_required",
    ),
    _query("response_mode", "query, the only one supported"),
]


def _form(parameters: list[Doc]) -> Doc:
    """The same parameters sent as a form body instead of a query."""
    properties = {
        p["name"]: {"type": "string", "description": p["description"]} for p in parameters
    }
    required = [p["name"] for p in parameters if p["required"]]
    schema = {"type": "object", "properties": properties, "required": required}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}},
    }


_FORM_BODY = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {"csrf_token": {"type": "string"}},
                "required": ["csrf_token"],
            }
        }
    },
}


def _device() -> Doc:
    """/device: type or confirm a device's user code, then allow or deny (RFC 8628 §3.3)."""
    user_code = _query("user_code", "A user code to fill in, from verification_uri_complete")
    body = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "csrf_token": {"type": "string"},
                        "user_code": {"type": "string", "description": "XXXX-XXXX, any case"},
                        "decision": {"enum": ["allow", "deny"]},
                    },
                    "required": ["csrf_token", "user_code"],
                }
            }
        },
    }
    return {
        "get": _page(
            "devicePage",
            "Type (or confirm) the code a device shows; signs the user in first",
            {200: "The form"},
            (302,),
            parameters=[user_code],
        ),
        "post": _page(
            "device",
            "A code shows what the device asks for; a decision allows or denies it",
            {
                200: "The question, or the outcome (again, to the browser session that answered)",
                400: "A wrong or expired code, or one another browser session answered (counts "
                "toward the guessing limit)",
            },
            (303,),
            requestBody=body,
        ),
    }


def _pushed_authorization() -> Doc:
    """/oauth/par (RFC 9126): the authorization request pushed by the client itself."""
    body = _form(_AUTHORIZE_PARAMETERS[:2] + _AUTHORIZE_PARAMETERS[3:])
    body["content"]["application/x-www-form-urlencoded"]["schema"]["properties"] |= {
        "client_secret": {"type": "string"},
        "client_assertion": {"type": "string"},
        "client_assertion_type": {"type": "string"},
    }
    errors = ("CrossOrigin", "TooLarge", "UnsupportedMediaType", "TooManyRequests", "Unavailable")
    return with_dpop_nonce(
        {
            "operationId": "pushedAuthorization",
            "summary": "Push an authorization request (RFC 9126), authenticated as at the token "
            f"endpoint; checked now, and stored for {LIFETIME} seconds under a request_uri the "
            "browser carries to /oauth/authorize with client_id",
            "tags": ["oauth"],
            "security": [{"basicAuth": []}, {}],
            # RFC 9449 §10.1: a proof binds the code to its key.
            "parameters": [ref("parameters", "DPoP")],
            "requestBody": body,
            "responses": {
                "201": json_response(
                    "PushedAuthorization",
                    "Stored; answered in one browser session",
                    {"Cache-Control": "NoStore"},
                ),
                "400": json_response(
                    "Error",
                    "What /oauth/authorize would refuse (invalid_request, invalid_scope, "
                    "invalid_target, unsupported_response_type...), a request_uri in the body, "
                    "or a refused DPoP proof (invalid_dpop_proof, use_dpop_nonce)",
                ),
                "401": json_response(
                    "Error", "invalid_client", {"WWW-Authenticate": "BasicChallenge"}
                ),
                **{str(ERRORS[name][0]): ref("responses", name) for name in errors},
            },
        }
    )


def paths() -> Doc:
    """/oauth/authorize, /login, /consent, /account, /oauth/logout, /device, userinfo, discovery."""
    userinfo = with_dpop_nonce(
        {
            "operationId": "userinfo",
            "summary": "OpenID Connect UserInfo: claims about the token's user (scope openid)",
            "tags": ["oauth"],
            "security": bearer("openid"),
            "parameters": [ref("parameters", "DPoP")],
            "responses": {
                "200": json_response("UserInfo", "The claims", {"Cache-Control": "NoStore"}),
                **{
                    str(ERRORS[name][0]): ref("responses", name)
                    for name in (*BEARER_ERRORS, "TooLarge")
                },
            },
        }
    )
    return {
        "/oauth/par": {"post": _pushed_authorization()},
        "/oauth/authorize": {
            "get": _page(
                "authorize",
                "Authorization endpoint (RFC 6749 §4.1, PKCE S256, OpenID Connect)",
                {400: "Unknown client or unregistered redirect URI: never redirected"},
                (302,),
                parameters=_AUTHORIZE_PARAMETERS,
            ),
            "post": _page(
                "authorizePost",
                "The authorization request as a form body (OpenID Connect Core §3.1.2.1); the "
                "query is ignored. Answered as a GET is, with 303 redirects; without a session, "
                "a 303 to the same request as a GET (a cross-site POST carries no SameSite=Lax "
                "cookie)",
                {
                    400: "Unknown client or unregistered redirect URI: never redirected",
                    413: "The body is larger than the configured maximum",
                },
                (303,),
                requestBody=_form(_AUTHORIZE_PARAMETERS),
            ),
        },
        "/login": {
            "get": _page(
                "loginPage",
                "The sign-in form",
                {200: "The form"},
                parameters=[
                    _query("next", "A path on this server to return to"),
                    _query(
                        "login_hint",
                        "A username to fill in; one that cannot be a username fills in nothing",
                    ),
                ],
            ),
            "post": _page(
                "login",
                "Sign in: a new browser session",
                {400: "Wrong credentials (one message for any cause)"},
                (303,),
                requestBody=_FORM_BODY,
            ),
        },
        "/consent": {
            "get": _page(
                "consentPage",
                "Allow or deny an app",
                {200: "The question"},
                (302,),
                parameters=_AUTHORIZE_PARAMETERS,
            ),
            "post": _page(
                "consent",
                "The user's decision (allow or deny)",
                {},
                (302, 303),
                parameters=_AUTHORIZE_PARAMETERS,
                requestBody=_FORM_BODY,
            ),
        },
        "/account": {
            "get": _page(
                "accountPage", "The signed-in user's account", {200: "The account page"}, (303,)
            )
        },
        "/account/password": {
            "post": _page(
                "changePasswordPage", "Change the password", {}, (303,), requestBody=_FORM_BODY
            )
        },
        "/account/sessions/end": {
            "post": _page(
                "endSessionPage", "Sign out one browser session", {}, (303,), requestBody=_FORM_BODY
            )
        },
        "/account/apps/sign-out": {
            "post": _page(
                "signOutAppPage", "Revoke one app's sign-in", {}, (303,), requestBody=_FORM_BODY
            )
        },
        "/account/sign-out-everywhere": {
            "post": _page(
                "signOutEverywherePage",
                "End every session and app sign-in",
                {},
                (303,),
                requestBody=_FORM_BODY,
            )
        },
        "/oauth/logout": {
            method: _page(
                f"logout{method.title()}",
                "RP-Initiated Logout 1.0 (id_token_hint, post_logout_redirect_uri, state)",
                {200: "Signed out, or asked to confirm"},
                # 303: a POST without the session cookie (cross-site), sent on as a GET
                (302,) if method == "get" else (302, 303),
                parameters=[
                    _query("id_token_hint", "An id_token we issued"),
                    _query("post_logout_redirect_uri", "Registered exactly"),
                    _query("state", "Returned unchanged"),
                    _query("client_id", "The client's id"),
                ],
            )
            for method in ("get", "post")
        },
        "/device": _device(),
        "/oauth/userinfo": {
            "get": {**userinfo},
            "post": {
                **userinfo,
                "operationId": "userinfoPost",
                "description": "The bearer token in the Authorization header or, instead, as "
                "`access_token` in a form body (RFC 6750 §2.2); never both.",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"access_token": {"type": "string"}},
                            }
                        }
                    },
                },
            },
        },
        "/.well-known/openid-configuration": {
            "get": {
                "operationId": "openidConfiguration",
                "summary": "OpenID Connect Discovery 1.0 (the RFC 8414 document)",
                "tags": ["oauth"],
                "security": [{}],
                "responses": {
                    "200": json_response("ServerMetadata", "The metadata"),
                    **{
                        str(ERRORS[n][0]): ref("responses", n)
                        for n in ("TooLarge", "TooManyRequests", "Unavailable")
                    },
                },
            }
        },
    }
