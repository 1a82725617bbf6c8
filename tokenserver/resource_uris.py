"""Resource URIs: a client's registered audiences and the `resource` it asks for (RFC 8707 §2),
and where a resource publishes its metadata (RFC 9728)."""

from __future__ import annotations

import functools
from urllib.parse import quote, unquote, urlsplit

import idna


def uri_problem(value: str) -> str | None:
    """Why `value` cannot be a resource (RFC 8707 §2: an absolute URI, no fragment), or None."""
    try:
        scheme = urlsplit(value).scheme
    except ValueError:  # an authority it cannot read, such as "https://[host/"
        return "must be an absolute URI without a fragment"
    if not scheme or "#" in value or not value.isprintable() or " " in value:
        return "must be an absolute URI without a fragment"
    return None


def same_resource(value: str, resource: str) -> bool:
    """Whether `value` names `resource` in another spelling of the same http(s) URI (RFC 9110
    §4.2.3): scheme and host in any case, the default port written out, and an empty path the
    same as "/" (`https://api.example` and `https://api.example/`)."""
    if value == resource:
        return True
    normal = _normal_http_uri(value)
    return normal is not None and normal == _normal_http_uri(resource)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normal_http_uri(uri: str) -> tuple[str, str, int | None, str, str | None] | None:
    """An http(s) URI's parts as RFC 9110 §4.2.3 compares them; None for anything else (and for
    userinfo, which names no other resource and which we never match)."""
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    # RFC 3986 §6.2.3: an empty query is still a query, so "?" is kept apart from none.
    return scheme, host, port, parts.path or "/", parts.query if "?" in uri else None


RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
# RFC 3986 §3.3: what a path may hold unencoded; "%" too, so an audience's escapes stay as given.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@functools.lru_cache(maxsize=8)
def resource_metadata_url(resource: str) -> str | None:
    """Where RFC 9728 §3.1 puts the metadata of `resource`: the well-known path inserted between
    its host and its path, in ASCII (an IDN host as its A-label, the path percent-encoded), as
    a header may carry it. None for a resource that is not an http(s) URL without query or
    fragment (an audience such as `urn:example:api` has nowhere to publish it)."""
    try:
        parts = urlsplit(resource)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    elif not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError:
            return None
    netloc = host if port is None else f"{host}:{port}"
    path = "" if parts.path == "/" else quote(parts.path, safe=_PATH_SAFE)  # §3.1
    return f"{parts.scheme}://{netloc}{RESOURCE_METADATA_PATH}{path}"


def resource_metadata_path(resource: str) -> str | None:
    """The path, as a request's decoded path reads, at which `resource`'s metadata is served."""
    url = resource_metadata_url(resource)
    return None if url is None else unquote(urlsplit(url).path)
