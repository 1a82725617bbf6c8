"""Where a browser may be sent: registered redirect URIs (RFC 8252 loopback) and local paths."""

from __future__ import annotations

from urllib.parse import urlsplit

# RFC 8252 §7.3: a native app listens on a loopback port chosen at run time.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]"})


def _without_port(netloc: str) -> str:
    host = netloc.rsplit("]", 1)[0] + "]" if netloc.startswith("[") else netloc.split(":", 1)[0]
    return host


def redirect_uri_matches(registered: str, requested: str) -> bool:
    """Whether `requested` is the registered URI exactly, or its loopback form on any port.

    Exact string comparison (RFC 9700 §4.1.3) stops open redirects through look-alike URIs;
    the only freedom is the port of an http loopback URI (RFC 8252 §7.3).
    """
    if requested == registered:
        return True
    reg, req = urlsplit(registered), urlsplit(requested)
    if reg.scheme != "http" or req.scheme != "http":
        return False
    reg_host, req_host = _without_port(reg.netloc), _without_port(req.netloc)
    if reg_host not in _LOOPBACK_HOSTS or req_host != reg_host:
        return False
    try:
        req.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        return False
    return (reg.path, reg.query, reg.fragment) == (req.path, req.query, req.fragment)


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


def redirect_uri_problem(uri: str) -> str | None:
    """Why a redirect URI cannot be registered, or None.

    RFC 6749 §3.1.2: absolute, no fragment. RFC 9700 §2.6 and RFC 8252 §8.3: plain http only on
    loopback; native apps may use a private-use scheme (com.example.app:/callback).
    """
    parts = urlsplit(uri)
    if not uri or any(ch.isspace() for ch in uri) or not parts.scheme:
        return "must be an absolute URI without spaces"
    if parts.fragment or "#" in uri:
        return "must not have a fragment"
    if parts.scheme in ("http", "https") and not parts.hostname:
        return "must name a host"
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        return "plain http is allowed only on loopback (127.0.0.1 or [::1])"
    if parts.scheme.lower() in ("javascript", "data", "file", "vbscript"):
        return "must not be a javascript:, data:, file: or vbscript: URI"
    return None
