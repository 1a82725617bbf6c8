"""Junk items: each owner's own, every statement filtered by owner.

Reads run on the request's pooled reader connection; each write is one Core statement in a
transaction of its own, committed before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BindParameter,
    Select,
    Table,
    bindparam,
    case,
    delete,
    insert,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy import update as sql_update

from ..extensions import reader
from ..models import JunkItem, RFC3339Text, utcnow
from . import single_write

_items: Table = JunkItem.__table__
# What an item is rendered from, its timestamps read as the API's text.
_COLUMNS = (
    _items.c.id,
    _items.c.name,
    _items.c.description,
    *(
        type_coerce(_items.c[name], RFC3339Text).label(name)
        for name in ("created_at", "updated_at")
    ),
)
_owner: BindParameter[int] = bindparam("owner")
_id: BindParameter[int] = bindparam("item")


@dataclass(frozen=True, slots=True)
class Item:
    """One junk item as stored, its timestamps as RFC 3339 text."""

    id: int
    name: str
    description: str
    created_at: str
    updated_at: str


def _page_statement(dialect: str) -> Select:  # type: ignore[type-arg]
    """One page as a seek on the (owner_id, id) index: never an OFFSET, never a scan.

    On PostgreSQL the seek is a row comparison on the whole index key, which only that index
    can serve: given a bare `id > :after`, its planner may walk the primary key instead and
    filter out every other user's rows on the way (a thousand of them for a first page in the
    tests). SQLite seeks that index only with the bare form, and prefers the index by itself.
    """
    after: BindParameter[int] = bindparam("after_id")
    if dialect == "postgresql":
        seek = tuple_(_items.c.owner_id, _items.c.id) > tuple_(_owner, after)
    else:
        seek = _items.c.id > after
    return (
        select(*_COLUMNS)
        .where(_items.c.owner_id == _owner, seek)
        .order_by(_items.c.owner_id, _items.c.id)
        .limit(bindparam("size"))
    )


# Built once: composing a statement costs more than running it (GET /junk is a hot path).
_PAGE = {dialect: _page_statement(dialect) for dialect in ("postgresql", "sqlite")}
_OWNED = (_items.c.id == _id, _items.c.owner_id == _owner)
_FIND = select(*_COLUMNS).where(*_OWNED)
_ADD = insert(_items).returning(*_COLUMNS)
_REMOVE = delete(_items).where(*_OWNED).returning(_items.c.id)


def page(owner_id: int, after_id: int, size: int) -> list[Item]:
    """Up to `size` of the owner's items with ids above `after_id`, oldest first."""
    conn = reader()
    dialect = conn.dialect.name
    statement = _PAGE[dialect] if dialect in _PAGE else _page_statement(dialect)
    params = {"owner": owner_id, "after_id": after_id, "size": size}
    return [Item(*row) for row in conn.execute(statement, params)]


def find(owner_id: int, item_id: int) -> Item | None:
    """The owner's item with this id, or None (another owner's item is None too)."""
    row = reader().execute(_FIND, {"owner": owner_id, "item": item_id}).first()
    return Item(*row) if row is not None else None


def add(owner_id: int, name: str, description: str) -> Item:
    """Store a new item for the owner."""
    now = utcnow()
    values = {
        "owner_id": owner_id,
        "name": name,
        "description": description,
        "created_at": now,
        "updated_at": now,
    }
    with single_write() as conn:
        return Item(*conn.execute(_ADD, values).one())


def update(owner_id: int, item_id: int, changes: dict[str, str]) -> Item | None:
    """Change some fields in one conditional UPDATE (concurrent changes never mix); None if
    the owner has no such item. `updated_at` moves only if a value changes."""
    changed = or_(*(_items.c[name] != value for name, value in changes.items()))
    now = literal(utcnow(), _items.c.updated_at.type)  # as the column binds it (UTC, checked)
    statement = (
        sql_update(_items)
        .where(*_OWNED)
        .values(**changes, updated_at=case((changed, now), else_=_items.c.updated_at))
        .returning(*_COLUMNS)
    )
    with single_write() as conn:
        row = conn.execute(statement, {"owner": owner_id, "item": item_id}).first()
    return Item(*row) if row is not None else None


def remove(owner_id: int, item_id: int) -> bool:
    """Delete the owner's item; False if the owner has no such item."""
    with single_write() as conn:
        gone = conn.execute(_REMOVE, {"owner": owner_id, "item": item_id}).first()
    return gone is not None
