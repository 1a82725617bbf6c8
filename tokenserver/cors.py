"""CORS (the Fetch standard): which pages on other origins may read our responses.

A single-page app signs its user in on our pages, then calls the token endpoint, userinfo and
the junk API from its own origin; without CORS headers the browser sends those requests but
hides every answer from the app. Allowed origins are those of the clients' registered redirect
URIs (Keycloak's "+" web origins): the page a code is sent to may exchange it; a page on any
other origin is refused outright, its form posts too. Metadata and keys are public, readable
from anywhere. Credentials mode is never allowed: nothing here is authorised by a cookie, so a
page can read only answers to requests carrying its own tokens.
"""

from __future__ import annotations

import functools
import re
import time

import idna
from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response

from . import clients
from .errors import Forbidden
from .redirects import readable_parts
from .store import clients as stored_clients

# Public documents: any page may read them.
_PUBLIC = frozenset(
    {"oauth.metadata", "oauth.protected_resource", "oauth.jwks", "oidc.openid_configuration"}
)
# What a browser app calls with its own tokens: readable by the registered web origins.
_APP = frozenset(
    {"oauth.token", "oauth.pushed_authorization", "oauth.revoke", "oidc.userinfo", "users.me"}
)
_APP_BLUEPRINTS = frozenset({"junk"})
_ALLOW_HEADERS = "Authorization, Content-Type, DPoP, X-Request-ID"
# An MCP client in a browser sends its protocol version with every discovery request.
_PUBLIC_ALLOW_HEADERS = _ALLOW_HEADERS + ", MCP-Protocol-Version"
# What an app needs to read besides the body: errors' challenges, when to retry, new items,
# and the nonce its next DPoP proof must carry (RFC 9449 §8.2).
_EXPOSE_HEADERS = "WWW-Authenticate, Retry-After, Location, X-Request-ID, DPoP-Nonce"
_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer
# An origin as browsers serialise it: scheme, lower-case host (or [IPv6]), a port if not default.
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_LOOPBACK_HOSTS = ("127.0.0.1", "[::1]")  # RFC 8252 §7.3: a registered loopback URI, any port
_DEFAULT_PORTS = {"http": 80, "https": 443}
_EXTENSION = "tokenserver.web_origins"


class WebOrigins:
    """This worker's copy of the origins of every registered redirect URI, kept `ttl` seconds:
    each reload reads every client's redirect URIs.

    A cache: the process that changes a client forgets it at once (clients.on_change); other
    workers and nodes see a new or deleted client's origin within `ttl`.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._until = 0.0
        self._origins: frozenset[str] = frozenset()
        self._loopback: frozenset[str] = frozenset()  # hosts of registered http loopback URIs

    def allows(self, origin: str) -> bool:
        """Whether a page at `origin` (the Origin header as sent) may read app responses."""
        match = _ORIGIN.fullmatch(origin)
        if match is None or (match[3] is not None and int(match[3]) > 65535):
            return False  # "null", a path, upper case, a port out of range: not a web origin
        if time.monotonic() >= self._until:
            self._load()
        # A native app's loopback redirect URI matches any port (redirects.py); so does its page.
        return origin in self._origins or (match[1] == "http" and match[2] in self._loopback)

    def forget(self, _client_id: str = "") -> None:
        """Reload on next use: a client has just changed here."""
        self._until = 0.0

    def _load(self) -> None:
        origins: set[str] = set()
        loopback: set[str] = set()
        for registered in stored_clients.redirect_uris():
            for uri in registered.split():
                found = _origin_of(uri)
                if found is not None:
                    origin, host = found
                    origins.add(origin)
                    if origin.startswith("http://") and host in _LOOPBACK_HOSTS:
                        loopback.add(host)
        self._origins, self._loopback = frozenset(origins), frozenset(loopback)
        self._until = time.monotonic() + self.ttl


@functools.lru_cache(maxsize=65536)  # each reload parses only URIs it has not seen
def _origin_of(uri: str) -> tuple[str, str] | None:
    """The origin of a page at `uri` as a browser sends it, and its host; None for a native
    app's private-use URI."""
    parts = readable_parts(uri)
    if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname
    if not host.isascii():
        try:
            # As browsers do (UTS #46, non-transitional): "straße" is not "strasse".
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError:
            return None
    host = f"[{host}]" if ":" in host else host
    port = parts.port
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}", host
    return f"{parts.scheme}://{host}:{port}", host


def _endpoint() -> str | None:
    """The endpoint of the route this request's path names, even one its method misses.

    Routing leaves request.endpoint unset for a method the path does not take (405); that
    answer is still the route's, and its page must read it like any other error.
    """
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return request.endpoint
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return None
    try:
        rule, _ = adapter.match(method=next(iter(error.valid_methods)), return_rule=True)
    except HTTPException:
        return None
    return rule.endpoint


def _is_app_route(endpoint: str | None) -> bool:
    if endpoint is None:
        return False
    return endpoint in _APP or endpoint.rpartition(".")[0] in _APP_BLUEPRINTS


def _allowed_origin() -> str | None:
    """What Access-Control-Allow-Origin says to this request's page, if anything.

    Raises Forbidden for any request of a page the app routes do not serve, preflight or not
    (its developer reads why in the browser's network panel). A form post needs no preflight:
    answered, it would let any page make its visitors' browsers guess passwords, spend codes or
    push requests, from their addresses and past the per-IP limits, at a server the page's
    author may not even reach; refused here, nothing is checked, counted or stored.
    """
    origin = request.environ.get("HTTP_ORIGIN")
    if origin is None:
        return None
    endpoint = _endpoint()
    if endpoint in _PUBLIC:
        return "*"
    if not _is_app_route(endpoint):
        return None
    origins: WebOrigins = current_app.extensions[_EXTENSION]
    if origins.allows(origin):
        return origin
    raise Forbidden(
        "This origin may not call this endpoint from a browser: it is not the origin of "
        "any client's registered redirect URI."
    )


def _is_preflight() -> bool:
    return request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.environ


def _check() -> Response | None:
    """Before the request: note the page's allowed origin; answer a preflight at once."""
    origin = _allowed_origin()
    if origin is None:
        return None
    g.cors_origin = origin
    if not _is_preflight():
        return None
    # Flask's own answer to OPTIONS names the methods of this path (Allow); a preflight is not
    # counted by the per-IP limits, which run after this hook.
    response = current_app.make_default_options_response()  # a 204
    methods = [method for method in response.allow if method not in ("OPTIONS", "HEAD")]
    response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
    public = origin == "*"  # a public document's
    response.headers["Access-Control-Allow-Headers"] = (
        _PUBLIC_ALLOW_HEADERS if public else _ALLOW_HEADERS
    )
    response.headers["Access-Control-Max-Age"] = _MAX_AGE
    return response


def _add_headers(response: Response) -> Response:
    """After the request: tell the browser which page may read the answer."""
    endpoint = _endpoint()
    if endpoint in _PUBLIC:
        response.headers["Access-Control-Allow-Origin"] = "*"  # with or without an Origin
        return response
    if _is_app_route(endpoint):
        # Fetch standard §3.2.5: what these routes answer depends on Origin (allowed, refused,
        # or sent none), so every answer says so, lest a cache give one page another's.
        if "Vary" in response.headers:
            response.vary.add("Origin")
        else:
            response.headers["Vary"] = "Origin"  # the common case, without parsing a header set
    origin = g.get("cors_origin")
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
    return response


def init_app(app: Flask) -> None:
    """Answer preflights before the per-IP limits count them (so: before limits.init_app)."""
    origins = WebOrigins()
    app.extensions[_EXTENSION] = origins
    clients.on_change(app, origins.forget)
    app.before_request(_check)
    app.after_request(_add_headers)
