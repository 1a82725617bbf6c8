"""Per-IP rate limits (Flask-Limiter) on the routes anyone may call without a token.

Sign-ups count every attempt (so taken names cannot be probed quickly); the token, introspection,
revocation and client registration endpoints count only failures, so busy legitimate clients are
never slowed (nor is a device polling its own code until its user answers: an error marked by
errors.protocol_step is no failure, and neither is a DPoP proof refused for want of a nonce);
the discovery routes, device authorizations and pushed requests count every request; wrong
device user codes count per IP and per browser session. Token requests, sign-ins and user codes
are each counted before they are checked and given back if they succeed.
/healthz, /readyz and /metrics are never limited: a load balancer checks /readyz on every node
twice a second from one address. Each app reads its values, switch and storage from its own
settings.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask_limiter import Limit, Limiter, RequestLimit

from .config import Settings, current_settings
from .errors import error_response, is_a_protocol_step, seconds
from .resource_uris import RESOURCE_METADATA_PATH

log = logging.getLogger(__name__)
_NEVER_LIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class _Rule:
    """Which requests one limit counts, and which setting holds its value."""

    name: str
    routes: frozenset[str]
    methods: tuple[str, ...]
    setting: str
    failures_only: bool
    key: Callable[[], str] | None = None  # whose requests count; None: the client's IP
    # One count for all the rule's routes; otherwise Flask-Limiter keeps one per route.
    shared: bool = False
    # Failures only, but counted before the request and given back if it succeeds: counted
    # after it, failures sent together would all pass the check before any of them counted.
    reserved: bool = False


def _browser_session() -> str:
    """Who the per-session user-code limit counts: the signed-in session, else the IP."""
    from .pages.web import current_session

    session = current_session()
    return f"session:{session.id}" if session is not None else client_address()


_READ = ("GET", "HEAD")
RULES = (
    _Rule("signup", frozenset({"/users"}), ("POST",), "ratelimit_signup", False),
    # The sign-in page checks passwords as the token endpoint does: one count for both, or a
    # guesser would get the budget twice over by taking turns between them.
    _Rule(
        "token",
        frozenset({"/oauth/token", "/login"}),
        ("POST",),
        "ratelimit_token_failures",
        True,
        shared=True,
        reserved=True,  # passwords sent all at once are never checked beyond the limit
    ),
    _Rule(
        "device_authorization",
        frozenset({"/oauth/device_authorization"}),
        ("POST",),
        "ratelimit_default",
        False,  # each success stores a new authorization: every request counts
    ),
    # RFC 9126: each pushed request is stored, and a public client's id is no secret.
    _Rule("pushed_authorization", frozenset({"/oauth/par"}), ("POST",), "ratelimit_default", False),
    # RFC 8628 §5.1: a user code is short, so wrong guesses count per IP and per browser session,
    # and never more of them are looked up than the limit, however many are sent at once.
    _Rule(
        "user_code",
        frozenset({"/device"}),
        ("POST",),
        "ratelimit_user_code",
        True,
        reserved=True,
    ),
    _Rule(
        "user_code_session",
        frozenset({"/device"}),
        ("POST",),
        "ratelimit_user_code",
        True,
        key=_browser_session,
        reserved=True,
    ),
    _Rule(
        "introspect",
        frozenset({"/oauth/introspect", "/introspect"}),
        ("POST",),
        "ratelimit_default",
        True,
    ),
    _Rule("revoke", frozenset({"/oauth/revoke"}), ("POST",), "ratelimit_default", True),
    # Registration needs a token: failures (a guessed or spent token, bad metadata) count,
    # on the budget that guards the token endpoint's credentials.
    _Rule(
        "register",
        frozenset({"/oauth/register", "/oauth/register/<client_id>"}),
        ("POST", *_READ, "PUT", "DELETE"),  # HEAD checks the token as GET does
        "ratelimit_token_failures",
        True,
    ),
    _Rule(
        "discovery",
        frozenset(
            {
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
                RESOURCE_METADATA_PATH,
                f"{RESOURCE_METADATA_PATH}/<path:resource_path>",
                "/oauth/authorize",
                # A hint there costs a key lookup and a signature check, and anyone may send one.
                "/oauth/logout",
                "/.well-known/jwks.json",
                "/openapi.json",
            }
        ),
        (*_READ, "POST"),  # /oauth/authorize and /oauth/logout take POST too (OpenID specs)
        "ratelimit_default",
        False,
    ),
)


def client_address() -> str:
    """Who a per-IP limit counts: the peer, or the client a trusted proxy names (ProxyFix)."""
    return request.remote_addr or "unknown"


def _route() -> str | None:
    return request.url_rule.rule if request.url_rule is not None else None


def _failed(response: Response) -> bool:
    return response.status_code >= 400 and not is_a_protocol_step()


def _too_many(limit: RequestLimit) -> Response:
    """The JSON 429 every per-IP limit answers with."""
    retry_after = max(1, math.ceil(limit.window.reset_time - time.time()))
    if request.blueprint == "pages":
        from .pages.web import page

        response = page(
            "error.html",
            429,
            title="Too many attempts",
            message=f"Too many requests from this address; retry after {seconds(retry_after)}.",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    return error_response(
        429,
        "too_many_requests",
        f"Too many requests from this address; retry after {seconds(retry_after)}.",
        {"Retry-After": str(retry_after)},
    )


@dataclass(eq=True, unsafe_hash=True)
class _RouteLimit(Limit):
    """A default limit that exists only on its own routes.

    Flask-Limiter resolves every default limit (parsing its value, building its runtime limit,
    asking its exemption) on every request; each of ours applies to a route or two.
    """

    routes: frozenset[str] = field(default=frozenset(), kw_only=True)

    def __iter__(self) -> Iterator[Any]:  # Flask-Limiter's RuntimeLimit
        if _route() in self.routes:
            yield from super().__iter__()


def _limit(rule: _Rule) -> Limit:
    def value() -> str:
        limit: str = getattr(current_settings(), rule.setting)
        return limit

    counted_after = rule.failures_only and not rule.reserved
    deduct_when: Callable[[Response], bool] | None = _failed if counted_after else None
    return _RouteLimit(
        value,
        key_function=rule.key or client_address,
        scope=rule.name,
        shared=rule.shared,
        methods=rule.methods,
        deduct_when=deduct_when,
        on_breach=_too_many,
        routes=rule.routes,
    )


_RESERVED = frozenset(rule.name for rule in RULES if rule.reserved)
_RESERVED_ROUTES = frozenset().union(*(rule.routes for rule in RULES if rule.reserved))


def _give_back_successes(response: Response) -> Response:
    """Give back what a reserved limit counted before a request that then succeeded."""
    if _route() not in _RESERVED_ROUTES or _failed(response):
        return response
    for counted in limiter.current_limits:
        # Flask-Limiter scopes a default limit to a route as "<endpoint>:<our scope>" (a shared
        # one as "<our scope>").
        if counted.request_args[-1].rpartition(":")[2] not in _RESERVED:
            continue
        try:
            # The storage sets an expiry only on a count this creates: one whose window ended
            # meanwhile. Expiry 0 drops it at once rather than open the next window at -1, an
            # extra guess. (A next window another request has opened still gets one back.)
            limiter.storage.incr(counted.key, 0, amount=-1)
        except limiter.storage.base_exceptions:
            log.exception("Could not give back a rate limit count")  # it stays counted
    return response


def per_ip_limits() -> list[str | Callable[[], str] | Limit]:
    """The Limiter's default limits: each one exists only on the routes its rule names."""
    return [_limit(rule) for rule in RULES]


def unlimited() -> bool:
    """Requests no per-IP limit applies to: all when switched off; the operational routes."""
    return not current_settings().ratelimit_enabled or _route() in _NEVER_LIMITED


def init_app(app: Flask) -> None:
    """Bind the shared Limiter to this app with the app's storage.

    Flask-Limiter keeps one storage per Limiter, the one of the app bound last: in a served
    process there is only one app. Values and the on/off switch are read per request from the
    app's own settings, so apps built side by side (tests, the CLI) keep theirs.
    """
    settings: Settings = app.extensions["tokenserver.settings"]
    app.config.update(
        # Always on at the Limiter: the switch is per app, read per request by unlimited().
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage_uri,
        RATELIMIT_STORAGE_OPTIONS=_storage_options(settings),
        RATELIMIT_STRATEGY="fixed-window",
    )
    limiter.init_app(app)
    _only_where_limited(app, limiter, settings)
    app.after_request(_give_back_successes)


def _only_where_limited(app: Flask, limiter: Limiter, settings: Settings) -> None:
    """Run the Limiter's request hooks only on routes a rule limits, while limits are on.

    Flask-Limiter resolves every default limit (and its exemption) on every request, which
    made up a sixth of the cost of /healthz; the routes no rule names never need it.
    """
    routes = (
        frozenset().union(*(rule.routes for rule in RULES))
        if settings.ratelimit_enabled
        else frozenset()
    )

    def limited() -> bool:
        rule = request.url_rule
        return rule is not None and rule.rule in routes

    def gate(hook: Callable[..., Any], passthrough: bool) -> Callable[..., Any]:
        def gated(*args: Any) -> Any:
            if limited():
                return hook(*args)
            return args[0] if passthrough else None

        return gated

    for hooks, passthrough in (
        (app.before_request_funcs, False),
        (app.after_request_funcs, True),
        (app.teardown_request_funcs, False),
    ):
        chain = hooks.get(None, [])
        for i, hook in enumerate(chain):
            if getattr(hook, "__self__", None) is limiter or (
                isinstance(hook, functools.partial) and limiter in hook.args
            ):
                chain[i] = gate(hook, passthrough)


def _storage_options(settings: Settings) -> dict[str, str | int]:
    if urlsplit(settings.ratelimit_storage_uri).scheme == "memory":
        return {}
    return {
        "key_prefix": f"{settings.ratelimit_key_prefix}:limits",
        "socket_timeout": 2,
        "socket_connect_timeout": 2,
    }


limiter = Limiter(
    key_func=client_address,
    default_limits=per_ip_limits(),  # values read per request from the app's settings
    swallow_errors=True,  # a Redis outage lifts per-IP limits; the password guard stays
)
limiter.request_filter(unlimited)
