"""Resource URIs (RFC 8707 §2): a client's registered audiences and the `resource` it asks for."""

from __future__ import annotations

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
