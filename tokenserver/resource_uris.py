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
