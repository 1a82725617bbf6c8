"""Where a browser may be sent: registered redirect URIs (RFC 8252 loopback) and local paths."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

# RFC 8252 §7.3: a native app listens on a loopback port chosen at run time. Only the port may
# differ, and only as digits: "http://127.0.0.1:80@evil.example/" is evil.example's.
_LOOPBACK = re.compile(r"(http://(?:127\.0\.0\.1|\[::1\]))(?::([0-9]{1,5}))?(/.*)?", re.DOTALL)


def _without_port(uri: str) -> str | None:
    """A loopback http URI with its port taken out, or None for any other URI."""
    match = _LOOPBACK.fullmatch(uri)
    if match is None or (match[2] is not None and int(match[2]) > 65535):
        return None
    return match[1] + (match[3] or "")


def redirect_uri_matches(registered: str, requested: str) -> bool:
    """Whether `requested` is the registered URI exactly, or its loopback form on any port.

    Exact string comparison (RFC 9700 §4.1.3) stops open redirects through look-alike URIs;
    the only freedom is the port of an http loopback URI (RFC 8252 §7.3).
    """
    if requested == registered:
        return True
    portless = _without_port(registered)
    return portless is not None and portless == _without_port(requested)


def local_path(target: str | None, default: str = "/account") -> str:
    """`target` if it is a path on this server, else `default`: never an open redirect.

    "//evil.example", "/\\evil.example" and "https://evil.example" all leave the site.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(ch) < 0x20 for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


# Hosts that name this machine, as urlsplit gives them (no brackets around ::1).
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def destination(uri: str) -> str:
    """Where a redirect URI takes the browser, as a person can check it on a consent page: a
    web app's host, "an app on this device" for loopback, or a native app's scheme.

    A host is shown in its ASCII form, as browsers show a mixed-script one: "аpp.example.com"
    with a Cyrillic "а" reads "xn--pp-6kc.example.com", not as the app it imitates.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return parts.scheme
    host = parts.hostname or ""
    if host in LOOPBACK_HOSTS:
        return "an app on this device"
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host.encode("ascii", "backslashreplace").decode("ascii")


UNREADABLE = "must have a host and a port (0-65535) that can be read"


def readable_parts(uri: str) -> SplitResult | None:
    """`uri` split into its parts, or None if its host or port cannot be read (UNREADABLE):
    "https://[host/", a port that is not a number up to 65535."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises for a port that is not a number up to 65535
    except ValueError:
        return None
    return parts


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI cannot be registered, or None.

    RFC 6749 §3.1.2: absolute, no fragment. RFC 9700 §2.6 and RFC 8252 §8.3: plain http only on
    loopback; native apps may use a private-use scheme (com.example.app:/callback).
    """
    if not uri or any(ch.isspace() for ch in uri):
        return "must be an absolute URI without spaces"
    if not uri.isprintable():
        return "must not hold control characters"  # e.g. a NUL, which PostgreSQL cannot store
    if "\\" in uri:
        # Not allowed in a URI (RFC 3986), and read differently by browsers and by Python:
        # browsers see app.example in "https://app.example\@evil.example/", Python evil.example.
        return "must not hold a backslash"
    parts = readable_parts(uri)
    if parts is None:
        return UNREADABLE
    if not parts.scheme:
        return "must be an absolute URI without spaces"
    if parts.fragment or "#" in uri:
        return "must not have a fragment"
    if "@" in parts.netloc:
        # User information reads as a host to people: "https://app.example.com@evil.example/"
        # sends the browser, and the code, to evil.example (RFC 3986 §7.6).
        return "must not hold a user name or password (user@host)"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "must name a host"
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        return "plain http is allowed only on loopback (127.0.0.1 or [::1])"
    if parts.scheme.lower() in ("javascript", "data", "file", "vbscript"):
        return "must not be a javascript:, data:, file: or vbscript: URI"
    return None
