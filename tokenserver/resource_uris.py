"""Resource URIs: a client's registered audiences and the `resource` it asks for (RFC 8707 §2),
and where a resource publishes its metadata (RFC 9728)."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit


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


@functools.lru_cache(maxsize=8)
def resource_metadata_url(resource: str) -> str | None:
    """Where RFC 9728 §3.1 puts the metadata of `resource`: the well-known path inserted between
    its host and its path. None for a resource that is not an http(s) URL without query or
    fragment (an audience such as `urn:example:api` has nowhere to publish it)."""
    try:
        parts = urlsplit(resource)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return None
    path = "" if parts.path == "/" else parts.path  # §3.1: only a slash after the host goes
    return f"{parts.scheme}://{parts.netloc}{RESOURCE_METADATA_PATH}{path}"
