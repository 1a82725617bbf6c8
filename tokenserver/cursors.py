"""Opaque page cursors: where one owner's listing stopped, as a short URL-safe string."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

from .errors import InvalidRequest

MAX_ID = 2**63 - 1  # ids are BIGINT; nothing larger can exist
_VERSION = 1
_MAX_LENGTH = 200
_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,150}\.[A-Za-z0-9_-]{1,40}")
_KEYS = {"v", "o", "a"}


def encode(owner_id: int, after_id: int) -> str:
    """A cursor meaning "this owner's items with an id above after_id"."""
    payload = json.dumps({"v": _VERSION, "o": owner_id, "a": after_id}, separators=(",", ":"))
    raw = payload.encode("ascii")
    return f"{_b64encode(raw)}.{_b64encode(_check(raw))}"


def decode(cursor: str, owner_id: int) -> int:
    """The id a cursor resumes after, or a 400 naming `cursor` if it is not one we issued.

    The cursor is neither a secret nor a capability: the owner filter on the query, not the
    cursor, keeps users apart. The checksum and the owner binding only turn a mangled or
    misplaced cursor into a clear 400 rather than a silently wrong page.
    """
    if len(cursor) > _MAX_LENGTH or not _SHAPE.fullmatch(cursor):
        raise _invalid()
    encoded, check = cursor.split(".")
    try:
        raw = _b64decode(encoded)
        if not hmac.compare_digest(_b64decode(check), _check(raw)):
            raise _invalid()
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _invalid() from None
    if not isinstance(data, dict) or set(data) != _KEYS:
        raise _invalid()
    if data["v"] != _VERSION or not _is_id(data["o"]) or data["o"] != owner_id:
        raise _invalid()
    if not _is_id(data["a"]):
        raise _invalid()
    after: int = data["a"]
    return after


def _is_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_ID


def _check(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=12, person=b"junk-cursor").digest()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:  # one spelling per cursor: stray trailing bits are tampering
        raise ValueError("non-canonical base64")
    return raw


def _invalid() -> InvalidRequest:
    return InvalidRequest("'cursor' is not valid: pass next_cursor from a previous page unchanged")
