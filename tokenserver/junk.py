"""/junk: each user's own items, read with junk:read and changed with junk:write."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.routing import BaseConverter

from . import cursors
from .errors import InvalidRequest, NotFound
from .models import Subject
from .oauth.protect import current_user, require_oauth
from .payloads import read_fields, require_string
from .store import junk as store

bp = Blueprint("junk", __name__)

NAME_MAX = 200
DESCRIPTION_MAX = 10_000
PAGE_DEFAULT = 20
PAGE_MAX = 100
FIELDS = frozenset({"name", "description"})
_LIMIT = re.compile(r"[0-9]{1,4}")
_ITEM = "/junk/<item_id:item_id>"  # "abc", "-1", "01", Unicode digits: no match, so a 404


class ItemIdConverter(BaseConverter):
    """An item id as the API spells it: ASCII digits, no leading zero, at most 19 of them.

    Werkzeug's `int` takes any Unicode digits (\\d) and leading zeros, so "/junk/01" and
    "/junk/%D9%A1" (ARABIC-INDIC DIGIT ONE) would be item 1: one item, many URLs.
    """

    regex = r"[1-9][0-9]{0,18}"  # 19 digits reach past BIGINT: _checked finds those absent
    part_isolating = True

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(int(value))


# --- the domain: the store filters every statement by owner, so another user's item is absent ---


def parse_limit(raw: str | None) -> int:
    """The page size from the `limit` parameter: 1 to PAGE_MAX, PAGE_DEFAULT when absent."""
    if raw is None:
        return PAGE_DEFAULT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= PAGE_MAX:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {PAGE_MAX}")
    return int(raw)


def list_page(owner: Subject, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of the owner's items, oldest first, with the cursor of the next page or None.

    One item beyond the page is read to learn whether another page follows.
    """
    after = cursors.decode(cursor, owner.id) if cursor is not None else 0
    found = store.page(owner.id, after, limit + 1)
    items = found[:limit]
    return {
        "items": [_rendered(item) for item in items],
        "next_cursor": cursors.encode(owner.id, items[-1].id) if len(found) > limit else None,
    }


def create(owner: Subject, data: dict[str, Any]) -> dict[str, Any]:
    """Store a new item for the owner; the item as rendered."""
    fields = _validated(data, partial=False)
    return _rendered(store.add(owner.id, fields["name"], fields.get("description", "")))


def get(owner: Subject, item_id: int) -> dict[str, Any]:
    """The owner's item with this id as rendered, or NotFound."""
    return _rendered(_found(store.find(owner.id, _checked(item_id))))


def patch(owner: Subject, item_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Change the given fields; the item as rendered, or NotFound."""
    changes = _validated(data, partial=True)
    return _rendered(_found(store.update(owner.id, _checked(item_id), changes)))


def remove(owner: Subject, item_id: int) -> None:
    """Delete the owner's item, or NotFound."""
    if not store.remove(owner.id, _checked(item_id)):
        raise _missing()


def _rendered(item: store.Item) -> dict[str, Any]:
    """An item as the API renders it (dataclasses.asdict costs thirty times this)."""
    return {
        "id": item.id,
        "name": item.name,
        "description": item.description,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def _checked(item_id: int) -> int:
    """An id that could exist; beyond BIGINT it would overflow the driver, so it is absent."""
    if not 1 <= item_id <= cursors.MAX_ID:
        raise _missing()
    return item_id


def _found(item: store.Item | None) -> store.Item:
    if item is None:
        raise _missing()
    return item


def _validated(data: dict[str, Any], *, partial: bool) -> dict[str, str]:
    fields: dict[str, str] = {}
    if not partial or "name" in data:
        fields["name"] = _text(data, "name", min_length=1, max_length=NAME_MAX)
    if "description" in data:
        fields["description"] = _text(data, "description", max_length=DESCRIPTION_MAX)
    if not fields:
        raise InvalidRequest("send at least one of 'name' and 'description'")
    return fields


def _text(data: dict[str, Any], field: str, *, max_length: int, min_length: int = 0) -> str:
    if min_length and data.get(field) == "":
        raise InvalidRequest(f"'{field}' must not be empty")
    # NUL and lone surrogates never get here: payloads refuses them in every field.
    return require_string(data, field, min_length=min_length, max_length=max_length)


def _missing() -> NotFound:
    # One message for "never existed" and "someone else's": the answer must not tell them apart.
    return NotFound("no such junk item")


# --- the routes ---------------------------------------------------------------------------------


def _query_arg(name: str) -> str | None:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"'{name}' must be given once")
    return values[0] if values else None


@bp.get("/junk")
@require_oauth("junk:read")
def list_items() -> Response:
    """A page of the caller's items, oldest first."""
    limit = parse_limit(_query_arg("limit"))
    return jsonify(list_page(current_user(), limit, _query_arg("cursor")))


@bp.post("/junk")
@require_oauth("junk:write")
def create_item() -> tuple[Response, int, dict[str, str]]:
    """Store a new item (JSON body)."""
    item = create(current_user(), read_fields(FIELDS))
    return jsonify(item), 201, {"Location": url_for("junk.get_item", item_id=item["id"])}


@bp.get(_ITEM)
@require_oauth("junk:read")
def get_item(item_id: int) -> Response:
    """One of the caller's items."""
    return jsonify(get(current_user(), item_id))


@bp.patch(_ITEM)
@require_oauth("junk:write")
def patch_item(item_id: int) -> Response:
    """Change some fields of one of the caller's items."""
    return jsonify(patch(current_user(), item_id, read_fields(FIELDS)))


@bp.delete(_ITEM)
@require_oauth("junk:write")
def delete_item(item_id: int) -> tuple[str, int]:
    """Delete one of the caller's items."""
    remove(current_user(), item_id)
    return "", 204
