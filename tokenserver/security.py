"""Security headers on every response, and which proxies' X-Forwarded-For to believe."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Settings

# We serve JSON only: no page may load anything, be framed, or leak its address onward.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Our HTML pages load our one stylesheet and nothing else; no page may frame them.
_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Responses here carry tokens or user data: no cache (browser, proxy, CDN) may keep them.
_PRIVATE_PREFIXES = ("/oauth/", "/introspect", "/users", "/junk")
_HSTS = "max-age=63072000; includeSubDomains"


def _add_headers(hsts: bool) -> Callable[[Response], Response]:
    def add(response: Response) -> Response:
        for name, value in _HEADERS.items():
            response.headers[name] = value
        if request.blueprint == "pages" or request.endpoint == "static":
            response.headers["Content-Security-Policy"] = _PAGE_CSP
            # With no-referrer, browsers send `Origin: null` on our own form posts, which the
            # pages' cross-site check must refuse; same-origin still tells other sites nothing.
            response.headers["Referrer-Policy"] = "same-origin"
        if request.path.startswith(_PRIVATE_PREFIXES):
            response.headers["Cache-Control"] = "no-store"
        if hsts:
            response.headers["Strict-Transport-Security"] = _HSTS
        return response

    return add


def init_app(app: Flask) -> None:
    """Add the headers to every response; trust X-Forwarded-For only from configured proxies."""
    settings: Settings = app.extensions["tokenserver.settings"]
    # Browsers heed HSTS only over https, so it is sent only when clients reach us that way.
    app.after_request(_add_headers(settings.issuer.startswith("https://")))
    if settings.trusted_proxies:
        # Without a trusted proxy, X-Forwarded-For is whatever the client wrote: believing it
        # would let anyone pick the IP that per-IP limits and the audit log see.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies
        )
