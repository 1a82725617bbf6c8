"""/junk: each user's own items, read with junk:read and changed with junk:write."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Table,
    bindparam,
    delete,
    select,
    tuple_,
    update,
)

from . import cursors
from .errors import InvalidRequest, NotFound
from .extensions import db, reader
from .models import JUNK_COLUMNS, JunkItem, Subject, render_junk, utcnow
from .oauth.protect import current_user, require_oauth
from .payloads import read_fields, require_string

bp = Blueprint("junk", __name__)

NAME_MAX = 200
DESCRIPTION_MAX = 10_000
PAGE_DEFAULT = 20
PAGE_MAX = 100
FIELDS = frozenset({"name", "description"})
_LIMIT = re.compile(r"[0-9]{1,4}")
_ITEM = "/junk/<int:item_id>"  # digits only: "abc" and "-1" never match, so they are a 404


# --- the domain: every query is filtered by owner, so another user's item is simply absent ---


def parse_limit(raw: str | None) -> int:
    """The page size from the `limit` parameter: 1 to PAGE_MAX, PAGE_DEFAULT when absent."""
    if raw is None:
        return PAGE_DEFAULT
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= PAGE_MAX:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {PAGE_MAX}")
    return int(raw)


def page_statement(dialect: str) -> Select:  # type: ignore[type-arg]
    """One page as a seek on the (owner_id, id) index: never an OFFSET, never a scan.

    On PostgreSQL the seek is a row comparison on the whole index key, which only that index
    can serve: given a bare `id > :after`, its planner may walk the primary key instead and
    filter out every other user's rows on the way (a thousand of them for a first page in the
    tests). SQLite seeks that index only with the bare form, and prefers the index by itself.
    One row beyond the page is fetched to learn whether another page follows. Plain rows, not
    ORM objects: a page is only rendered, and loading entities cost more than the query.
    """
    items: Table = JunkItem.__table__  # Core, not ORM: this is a hot path (see records.py)
    owner: BindParameter[int] = bindparam("owner_id")
    after: BindParameter[int] = bindparam("after_id")
    if dialect == "postgresql":
        seek = tuple_(items.c.owner_id, items.c.id) > tuple_(owner, after)
    else:
        seek = items.c.id > after
    return (
        select(*JUNK_COLUMNS)
        .where(items.c.owner_id == owner, seek)
        .order_by(items.c.owner_id, items.c.id)
        .limit(bindparam("size"))
    )


# Built once per dialect: composing a select costs more than running it.
_PAGE = {dialect: page_statement(dialect) for dialect in ("postgresql", "sqlite")}


def list_page(owner: Subject, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of the owner's items, oldest first, with the cursor of the next page or None."""
    after = cursors.decode(cursor, owner.id) if cursor is not None else 0
    conn = reader()
    dialect = conn.dialect.name
    statement = _PAGE[dialect] if dialect in _PAGE else page_statement(dialect)
    params = {"owner_id": owner.id, "after_id": after, "size": limit + 1}
    rows = conn.execute(statement, params).all()
    items = rows[:limit]
    more = len(rows) > limit
    return {
        "items": [render_junk(item) for item in items],
        "next_cursor": cursors.encode(owner.id, items[-1].id) if more else None,
    }


def create(owner: Subject, data: dict[str, Any]) -> dict[str, Any]:
    """Store a new item for the owner; the item as rendered."""
    fields = _validated(data, partial=False)
    now = utcnow()
    item = JunkItem(
        owner_id=owner.id,
        name=fields["name"],
        description=fields.get("description", ""),
        created_at=now,
        updated_at=now,
    )
    db.session.add(item)
    db.session.flush()  # assigns the id
    rendered = item.to_dict()  # now: after the commit, reading it would load it again
    db.session.commit()
    return rendered


def get(owner: Subject, item_id: int) -> JunkItem:
    """The owner's item with this id, or NotFound."""
    item = db.session.scalars(select(JunkItem).where(*_owned(owner, item_id))).one_or_none()
    if item is None:
        raise _missing()
    return item


def patch(owner: Subject, item_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Change the given fields in one conditional UPDATE, so concurrent patches never mix."""
    changes = _validated(data, partial=True)
    statement = (
        update(JunkItem)
        .where(*_owned(owner, item_id))
        .values(**changes, updated_at=utcnow())
        .returning(JunkItem)
        .execution_options(synchronize_session=False)
    )
    item = db.session.scalars(statement).one_or_none()
    if item is None:
        db.session.rollback()
        raise _missing()
    rendered = item.to_dict()
    db.session.commit()
    return rendered


def remove(owner: Subject, item_id: int) -> None:
    """Delete the owner's item, or NotFound."""
    result = db.session.execute(delete(JunkItem).where(*_owned(owner, item_id)))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        raise _missing()
    db.session.commit()


def _owned(owner: Subject, item_id: int) -> tuple[ColumnElement[bool], ...]:
    """The condition for "this owner's item with this id"; no such item if the id cannot exist."""
    if not 1 <= item_id <= cursors.MAX_ID:
        raise _missing()  # beyond BIGINT: would overflow the driver, so it never reaches it
    return (JunkItem.id == item_id, JunkItem.owner_id == owner.id)


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
    return jsonify(get(current_user(), item_id).to_dict())


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
