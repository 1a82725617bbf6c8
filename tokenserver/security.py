"""Security headers on every response, the body limit for chunked requests, trusted proxies."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
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
        # Credentials, user data, and pages that show who is signed in and carry CSRF tokens.
        # Pragma for HTTP/1.0 caches, as RFC 6749 §5.1 asks of token responses: every answer
        # here, not only those Authlib renders, so our own errors say the same.
        if request.path.startswith(_PRIVATE_PREFIXES) or request.blueprint == "pages":
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        if hsts:
            response.headers["Strict-Transport-Security"] = _HSTS
        if response.status_code == 204:
            del response.headers["Content-Type"]  # no content, so no type of content either
        return response

    return add


class ChunkedBodyLimit:
    """Give a chunked body a length, so it meets the same limit as a Content-Length one.

    Werkzeug stops reading a body without a length at the limit and the form parser takes what
    was read: the end of the body (a narrowing `scope`, say) was silently lost. Buffered here,
    at most one byte past the limit, the body gets a Content-Length that Flask refuses with 413.

    A body that ends before its Content-Length (the client closed its side) is refused too,
    never processed: RFC 9112 §6.3 says such a message is incomplete.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            body = self._read(environ["wsgi.input"])
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            # Decoded now: Werkzeug would ignore a Content-Length beside "chunked".
            del environ["HTTP_TRANSFER_ENCODING"]
        # gunicorn sets this, and Werkzeug then reads its stream to the end, a short one too:
        # without it, Werkzeug reads Content-Length bytes and answers 400 if fewer come.
        environ.pop("wsgi.input_terminated", None)
        return self.app(environ, start_response)  # type: ignore[no-any-return]

    def _read(self, stream: Any) -> bytes:
        parts: list[bytes] = []
        wanted = self.limit + 1
        while wanted > 0:
            part = stream.read(wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)


def _refusing_bodies_over(limit: int) -> Callable[[], None]:
    """A hook that answers 413 to a body over `limit` on every route, read or not.

    Flask refuses a body only when it is read: a DELETE /junk/<id> or a GET that ignores its
    body acted on a request the limit refuses (the chunked one measured in ChunkedBodyLimit).
    It runs on every request, so it reads the header as it came: most have none.
    """

    def refuse() -> None:
        length = request.environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > limit:
            raise RequestEntityTooLarge()

    return refuse


def init_app(app: Flask) -> None:
    """Add the headers to every response; trust X-Forwarded-For only from configured proxies."""
    settings: Settings = app.extensions["tokenserver.settings"]
    app.before_request(_refusing_bodies_over(settings.max_body_bytes))
    # Browsers heed HSTS only over https, so it is sent only when clients reach us that way.
    app.after_request(_add_headers(settings.issuer.startswith("https://")))
    app.wsgi_app = ChunkedBodyLimit(  # type: ignore[method-assign]
        app.wsgi_app, settings.max_body_bytes
    )
    if settings.trusted_proxies:
        # Without a trusted proxy, X-Forwarded-For is whatever the client wrote: believing it
        # would let anyone pick the IP that per-IP limits and the audit log see.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies
        )
