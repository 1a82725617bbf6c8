"""/junk: CRUD, isolation between users, validation, pagination, scopes, concurrency."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, insert, select

from tokenserver import accounts, cursors
from tokenserver.extensions import db
from tokenserver.models import JunkItem, User

from .conftest import Actions, LiveServer
from .helpers import BARE_CHALLENGE


@dataclass
class Caller:
    """A signed-in user: id, access token and the headers that carry it."""

    id: int
    token: str
    login: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _sign_in(actions: Actions, username: str) -> Caller:
    login = actions.login(username)
    me = actions.client.get("/users/me", headers=actions.bearer(login["access_token"]))
    return Caller(me.json["id"], login["access_token"], login)


@pytest.fixture
def alice(actions: Actions) -> Caller:
    return _sign_in(actions, "alice")


@pytest.fixture
def bob(actions: Actions) -> Caller:
    return _sign_in(actions, "bob")


def _create(client: FlaskClient, caller: Caller, **body: Any) -> dict[str, Any]:
    response = client.post("/junk", json={"name": "thing", **body}, headers=caller.headers)
    assert response.status_code == 201, response.json
    return response.json  # type: ignore[no-any-return]


def _count(app: Flask, owner_id: int | None = None) -> int:
    query = select(func.count()).select_from(JunkItem)
    if owner_id is not None:
        query = query.where(JunkItem.owner_id == owner_id)
    with app.app_context():
        return int(db.session.scalar(query) or 0)


def _store(app: Flask, owner_id: int, count: int) -> None:
    """Insert many items straight into the database (the API is tested elsewhere)."""
    now = datetime.now(UTC)
    rows = [
        {
            "owner_id": owner_id,
            "name": f"n{i}",
            "description": "",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    with app.app_context():
        db.session.execute(insert(JunkItem), rows)
        db.session.commit()


# --- create, read, update, delete ------------------------------------------------------------


def test_create_returns_the_item_and_its_location(client: FlaskClient, alice: Caller) -> None:
    response = client.post("/junk", json={"name": "lamp"}, headers=alice.headers)
    assert response.status_code == 201
    item = response.json
    assert set(item) == {"id", "name", "description", "created_at", "updated_at"}
    assert item["name"] == "lamp"
    assert item["description"] == ""
    assert item["created_at"] == item["updated_at"]
    assert response.headers["Location"] == f"/junk/{item['id']}"
    assert client.get(response.headers["Location"], headers=alice.headers).json == item


def test_create_keeps_the_description(client: FlaskClient, alice: Caller) -> None:
    item = _create(client, alice, name="n", description="a\nlonger\ttext ✓")
    fetched = client.get(f"/junk/{item['id']}", headers=alice.headers).json
    assert fetched["description"] == "a\nlonger\ttext ✓"


def test_longest_allowed_fields_are_accepted(client: FlaskClient, alice: Caller) -> None:
    item = _create(client, alice, name="é" * 200, description="d" * 10_000)
    assert len(item["name"]) == 200
    assert len(item["description"]) == 10_000


def test_patch_changes_only_the_given_fields(client: FlaskClient, alice: Caller) -> None:
    item = _create(client, alice, name="old", description="keep me")
    renamed = client.patch(f"/junk/{item['id']}", json={"name": "new"}, headers=alice.headers)
    assert renamed.status_code == 200
    assert (renamed.json["name"], renamed.json["description"]) == ("new", "keep me")
    cleared = client.patch(f"/junk/{item['id']}", json={"description": ""}, headers=alice.headers)
    assert (cleared.json["name"], cleared.json["description"]) == ("new", "")
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == cleared.json


def test_patch_moves_updated_at_but_never_created_at(actions: Actions) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False):
        alice = _sign_in(actions, "alice")
        item = _create(actions.client, alice)
    with time_machine.travel(start + timedelta(minutes=5), tick=False):
        url = f"/junk/{item['id']}"
        patched = actions.client.patch(url, json={"name": "x"}, headers=alice.headers)
    assert patched.json["created_at"] == "2030-01-01T12:00:00Z"
    assert patched.json["updated_at"] == "2030-01-01T12:05:00Z"


def test_patch_that_changes_nothing_keeps_updated_at(actions: Actions) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False):
        alice = _sign_in(actions, "alice")
        item = _create(actions.client, alice, name="same", description="also same")
    with time_machine.travel(start + timedelta(minutes=5), tick=False):
        url = f"/junk/{item['id']}"
        same = {"name": "same", "description": "also same"}
        unchanged = actions.client.patch(url, json=same, headers=alice.headers)
        partly = actions.client.patch(
            url, json={"name": "same", "description": "new"}, headers=alice.headers
        )
    assert unchanged.status_code == 200
    assert unchanged.json == item
    assert partly.json["updated_at"] == "2030-01-01T12:05:00Z"


@pytest.mark.parametrize(
    ("moment", "rendered"),
    [
        (datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC), "2030-01-01T12:00:00.250000Z"),
        (datetime(2030, 1, 1, 12, 0, 0, 7, tzinfo=UTC), "2030-01-01T12:00:00.000007Z"),
        (datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC), "2030-01-01T12:00:00Z"),
    ],
)
def test_every_route_renders_an_items_time_alike(
    actions: Actions, moment: datetime, rendered: str
) -> None:
    # Read back as text (a page's many timestamps skip the datetime): the same text as created.
    with time_machine.travel(moment, tick=False):
        alice = _sign_in(actions, "alice")
        created = _create(actions.client, alice)
    url = f"/junk/{created['id']}"
    one = actions.client.get(url, headers=alice.headers).json
    (listed,) = actions.client.get("/junk", headers=alice.headers).json["items"]
    for item in (created, one, listed):
        assert (item["created_at"], item["updated_at"]) == (rendered, rendered)


def test_delete_answers_204_and_the_item_is_gone(
    app: Flask, client: FlaskClient, alice: Caller
) -> None:
    item = _create(client, alice)
    response = client.delete(f"/junk/{item['id']}", headers=alice.headers)
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers  # no content, so no type of it
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).status_code == 404
    assert client.delete(f"/junk/{item['id']}", headers=alice.headers).status_code == 404
    assert _count(app) == 0


def test_user_data_is_never_cached(client: FlaskClient, alice: Caller) -> None:
    item = _create(client, alice)
    for response in (
        client.get("/junk", headers=alice.headers),
        client.get(f"/junk/{item['id']}", headers=alice.headers),
        client.get("/junk/999999", headers=alice.headers),
        client.get("/junk"),
        client.get("/users/me", headers=alice.headers),
    ):
        assert response.headers["Cache-Control"] == "no-store"


# --- two users side by side -------------------------------------------------------------------


def test_each_user_lists_only_their_own_items(
    client: FlaskClient, alice: Caller, bob: Caller
) -> None:
    for i in range(3):
        _create(client, alice, name=f"alice-{i}")
        _create(client, bob, name=f"bob-{i}")
    alices = client.get("/junk", headers=alice.headers).json["items"]
    bobs = client.get("/junk", headers=bob.headers).json["items"]
    assert [i["name"] for i in alices] == ["alice-0", "alice-1", "alice-2"]
    assert [i["name"] for i in bobs] == ["bob-0", "bob-1", "bob-2"]


@pytest.mark.parametrize(
    ("method", "body"), [("get", None), ("patch", {"name": "mine now"}), ("delete", None)]
)
def test_another_users_item_is_indistinguishable_from_a_missing_one(
    client: FlaskClient, alice: Caller, bob: Caller, method: str, body: dict[str, str] | None
) -> None:
    bobs = _create(client, bob, name="bob's", description="private")
    missing_id = bobs["id"] + 1000
    call = getattr(client, method)
    foreign = call(f"/junk/{bobs['id']}", json=body, headers=alice.headers)
    missing = call(f"/junk/{missing_id}", json=body, headers=alice.headers)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json == missing.json
    assert foreign.json["error"] == "not_found"
    assert "private" not in foreign.get_data(as_text=True)
    same = {k: v for k, v in foreign.headers.items() if k != "X-Request-ID"}
    assert same == {k: v for k, v in missing.headers.items() if k != "X-Request-ID"}
    assert client.get(f"/junk/{bobs['id']}", headers=bob.headers).json == bobs


def test_another_users_cursor_is_refused(
    app: Flask, client: FlaskClient, alice: Caller, bob: Caller
) -> None:
    _store(app, bob.id, 3)
    cursor = client.get("/junk?limit=1", headers=bob.headers).json["next_cursor"]
    response = client.get("/junk", query_string={"cursor": cursor}, headers=alice.headers)
    assert response.status_code == 400
    assert "cursor" in response.json["error_description"]


# --- validation -------------------------------------------------------------------------------

_INVALID_BODIES = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": None}, "name"),
    ({"name": 123}, "name"),
    ({"name": ["a"]}, "name"),
    ({"name": {"a": 1}}, "name"),
    ({"name": True}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"name": "nul\x00byte"}, "name"),
    ({"name": "ok", "description": None}, "description"),
    ({"name": "ok", "description": 5}, "description"),
    ({"name": "ok", "description": "d" * 10_001}, "description"),
    ({"name": "ok", "description": "\x00"}, "description"),
    ({"name": "ok", "owner_id": 2}, "owner_id"),
    ({"name": "ok", "id": 1}, "id"),
    ({"name": "ok", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
]


@pytest.mark.parametrize(("body", "field"), _INVALID_BODIES)
def test_invalid_create_names_the_field_and_writes_nothing(
    app: Flask, client: FlaskClient, alice: Caller, body: dict[str, Any], field: str
) -> None:
    response = client.post("/junk", json=body, headers=alice.headers)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert f"'{field}'" in response.json["error_description"]
    assert _count(app) == 0


@pytest.mark.parametrize(("body", "field"), [(b, f) for b, f in _INVALID_BODIES if b])
def test_invalid_patch_names_the_field_and_changes_nothing(
    client: FlaskClient, alice: Caller, body: dict[str, Any], field: str
) -> None:
    item = _create(client, alice, name="before", description="kept")
    response = client.patch(f"/junk/{item['id']}", json=body, headers=alice.headers)
    assert response.status_code == 400
    assert f"'{field}'" in response.json["error_description"]
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


def test_empty_patch_is_refused(client: FlaskClient, alice: Caller) -> None:
    item = _create(client, alice)
    response = client.patch(f"/junk/{item['id']}", json={}, headers=alice.headers)
    assert response.status_code == 400
    assert "'name'" in response.json["error_description"]
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"name": "x",}', "application/json", 400),
        (b"", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"a string"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"42", "application/json", 400),
        (b'{"name": "\\ud800"}', "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        # In UTF-16 the character before the quote ends in a backslash byte, hiding the brackets
        # after it from a count made on the bytes.
        (
            ('{"name": "a\u5c00", "description": ' + "[" * 3000 + "]" * 3000 + "}").encode(
                "utf-16-le"
            ),
            "application/json",
            400,
        ),
        (b"name=x", "application/x-www-form-urlencoded", 415),
        (b"name", "text/plain", 415),
        (b'{"name": "x"}', None, 415),
    ],
)
@pytest.mark.parametrize("method", ["post", "patch"])
def test_hostile_bodies_get_json_errors_and_write_nothing(
    app: Flask,
    client: FlaskClient,
    alice: Caller,
    method: str,
    data: bytes,
    content_type: str | None,
    status: int,
) -> None:
    item = _create(client, alice, name="before")
    url = "/junk" if method == "post" else f"/junk/{item['id']}"
    response = getattr(client, method)(
        url, data=data, content_type=content_type, headers=alice.headers
    )
    assert response.status_code == status
    assert set(response.json) == {"error", "error_description"}
    assert _count(app) == 1
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


@pytest.mark.parametrize(
    "data",
    [b'{"name": NaN}', b'{"name": "a", "description": Infinity}', b'{"name": -Infinity}'],
)
def test_nan_and_infinity_are_not_json(
    app: Flask, client: FlaskClient, alice: Caller, data: bytes
) -> None:
    # Python's parser takes them; RFC 8259 does not, so the answer is not about a field's type.
    response = client.post(
        "/junk", data=data, content_type="application/json", headers=alice.headers
    )
    assert response.status_code == 400
    assert response.json["error_description"] == "the body is not valid JSON"
    assert _count(app) == 0


@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_field_given_twice_is_refused_and_writes_nothing(
    app: Flask, client: FlaskClient, alice: Caller, method: str
) -> None:
    item = _create(client, alice, name="before")
    url = "/junk" if method == "post" else f"/junk/{item['id']}"
    for data, field in [
        (b'{"name": "a", "name": "b"}', "'name'"),
        (b'{"name": "a", "description": "", "description": "d"}', "'description'"),
        (b'{"name": "a", "description": {"x": 1, "x": 2}}', "'x'"),
    ]:
        response = getattr(client, method)(
            url, data=data, content_type="application/json", headers=alice.headers
        )
        assert response.status_code == 400
        assert response.json["error_description"] == f"{field} must be given once"
    assert _count(app) == 1
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


@pytest.mark.parametrize("method", ["post", "patch"])
def test_body_over_64_kib_is_413_and_writes_nothing(
    app: Flask, client: FlaskClient, alice: Caller, method: str
) -> None:
    item = _create(client, alice, name="before")
    url = "/junk" if method == "post" else f"/junk/{item['id']}"
    body = {"name": "big", "description": "d" * (64 * 1024)}
    response = getattr(client, method)(url, json=body, headers=alice.headers)
    assert response.status_code == 413
    assert response.json["error"] == "request_too_large"
    assert _count(app) == 1
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


@pytest.mark.parametrize(
    "item_id",
    ["abc", "0", "-1", "1.5", "1e3", "9223372036854775808", "99999999999999999999999", "%00"],
)
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_ids_that_are_not_ids_are_json_404(
    client: FlaskClient, alice: Caller, method: str, item_id: str
) -> None:
    body = {"name": "x"} if method == "patch" else None
    response = getattr(client, method)(f"/junk/{item_id}", json=body, headers=alice.headers)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


@pytest.mark.parametrize(
    "spelling",
    [
        lambda id_: "0" + id_,  # a leading zero
        lambda id_: "".join(chr(0x0660 + int(d)) for d in id_),  # ARABIC-INDIC digits
        lambda id_: "".join(chr(0xFF10 + int(d)) for d in id_),  # FULLWIDTH digits
    ],
    ids=["leading zero", "arabic-indic", "fullwidth"],
)
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_an_item_answers_at_its_one_spelling_of_id_only(
    client: FlaskClient, alice: Caller, method: str, spelling: Any
) -> None:
    item = client.post("/junk", json={"name": "kept"}, headers=alice.headers).json
    url = "/junk/" + quote(spelling(str(item["id"])))
    body = {"name": "changed"} if method == "patch" else None
    response = getattr(client, method)(url, json=body, headers=alice.headers)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert client.get(f"/junk/{item['id']}", headers=alice.headers).json == item


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_largest_possible_id_is_a_plain_404(
    client: FlaskClient, alice: Caller, method: str
) -> None:
    body = {"name": "x"} if method == "patch" else None
    url = f"/junk/{2**63 - 1}"
    response = getattr(client, method)(url, json=body, headers=alice.headers)
    assert response.status_code == 404
    assert response.json["error_description"] == "no such junk item"


# --- pagination -------------------------------------------------------------------------------


def _walk(client: FlaskClient, caller: Caller, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = client.get("/junk", query_string=params, headers=caller.headers)
        assert response.status_code == 200
        pages.append([item["name"] for item in response.json["items"]])
        if response.json["next_cursor"] is None:
            return pages
        params["cursor"] = response.json["next_cursor"]


@pytest.mark.parametrize(
    ("limit", "sizes"),
    [(1, [1] * 7), (2, [2, 2, 2, 1]), (3, [3, 3, 1]), (6, [6, 1]), (7, [7]), (100, [7])],
)
def test_pages_walk_an_odd_number_of_items_oldest_first(
    client: FlaskClient, alice: Caller, bob: Caller, limit: int, sizes: list[int]
) -> None:
    for i in range(7):
        _create(client, alice, name=f"a{i}")
        _create(client, bob, name=f"b{i}")  # interleaved ids must not leak into alice's pages
    pages = _walk(client, alice, limit)
    assert [len(page) for page in pages] == sizes
    assert [name for page in pages for name in page] == [f"a{i}" for i in range(7)]


def test_empty_collection_is_one_empty_page(client: FlaskClient, alice: Caller) -> None:
    assert client.get("/junk", headers=alice.headers).json == {"items": [], "next_cursor": None}


def test_default_page_is_twenty_items(app: Flask, client: FlaskClient, alice: Caller) -> None:
    _store(app, alice.id, 21)
    page = client.get("/junk", headers=alice.headers).json
    assert len(page["items"]) == 20
    assert page["next_cursor"] is not None


@pytest.mark.parametrize(("limit", "size"), [("1", 1), ("100", 100), ("007", 7)])
def test_limit_edges_that_are_allowed(
    app: Flask, client: FlaskClient, alice: Caller, limit: str, size: int
) -> None:
    _store(app, alice.id, 101)
    page = client.get(f"/junk?limit={limit}", headers=alice.headers).json
    assert len(page["items"]) == size
    assert page["next_cursor"] is not None


@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "abc", "", "1.5", "+5", " 5", "1e2", "٥", "99999999999999999999"]
)
def test_bad_limit_is_refused_naming_limit(client: FlaskClient, alice: Caller, limit: str) -> None:
    response = client.get("/junk", query_string={"limit": limit}, headers=alice.headers)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert "'limit'" in response.json["error_description"]


@pytest.mark.parametrize("query", ["limit=1&limit=2", "cursor=a&cursor=b"])
def test_repeated_query_parameter_is_refused(
    client: FlaskClient, alice: Caller, query: str
) -> None:
    response = client.get(f"/junk?{query}", headers=alice.headers)
    assert response.status_code == 400
    assert query.split("=")[0] in response.json["error_description"]


def test_tampered_or_garbage_cursor_is_refused(
    app: Flask, client: FlaskClient, alice: Caller
) -> None:
    _store(app, alice.id, 3)
    cursor = client.get("/junk?limit=1", headers=alice.headers).json["next_cursor"]
    tampered = cursor[:4] + ("A" if cursor[4] != "A" else "B") + cursor[5:]
    for bad in (tampered, "garbage", "", cursor + "x", cursor[::-1], "%%%", "x" * 10_000):
        response = client.get("/junk", query_string={"cursor": bad}, headers=alice.headers)
        assert response.status_code == 400, bad
        assert "'cursor'" in response.json["error_description"]


def test_cursor_survives_deleting_the_item_it_points_at(client: FlaskClient, alice: Caller) -> None:
    ids = [_create(client, alice, name=f"n{i}")["id"] for i in range(4)]
    page = client.get("/junk?limit=2", headers=alice.headers).json
    client.delete(f"/junk/{ids[1]}", headers=alice.headers)
    rest = client.get(
        "/junk", query_string={"cursor": page["next_cursor"]}, headers=alice.headers
    ).json
    assert [item["id"] for item in rest["items"]] == ids[2:]


def test_deep_page_seeks_the_index_and_costs_what_the_first_does(
    app: Flask, client: FlaskClient, alice: Caller, bob: Caller
) -> None:
    _store(app, bob.id, 1_000)
    _store(app, alice.id, 100_000)
    _store(app, bob.id, 1_000)
    with app.app_context():
        deep_id = db.session.scalars(
            select(JunkItem.id)
            .where(JunkItem.owner_id == alice.id)
            .order_by(JunkItem.id.desc())
            .offset(50)
            .limit(1)
        ).one()
    first = _page_query(app, client, alice, None)
    deep = _page_query(app, client, alice, cursors.encode(alice.id, deep_id))
    for sql, params in (first, deep):
        # SQLAlchemy's SQLite dialect always writes "OFFSET ?", bound to 0 here.
        assert "OFFSET" not in sql.upper() or params[-1] == 0
    with app.app_context(), db.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            for sql, params in (first, deep):
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
                detail = " | ".join(str(row[-1]) for row in plan)
                assert "INDEX ix_junk_items_owner_id_id (owner_id=? AND id>?)" in detail
                assert "TEMP B-TREE" not in detail  # no sort: the index yields the order
        else:
            conn.exec_driver_sql("ANALYZE junk_items")
            # One page plus the look-ahead row is all that is read, however deep the page.
            assert _rows_read(conn, *first) == _rows_read(conn, *deep) == 21


def _page_query(
    app: Flask, client: FlaskClient, caller: Caller, cursor: str | None
) -> tuple[str, Any]:
    """The one statement GET /junk ran against junk_items, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "junk_items" in statement:
            seen.append((statement, params))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        query = {"cursor": cursor} if cursor else {}
        response = client.get("/junk", query_string=query, headers=caller.headers)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    assert len(response.json["items"]) == 20
    assert len(seen) == 1
    return seen[0]


def _rows_read(conn: Any, sql: str, params: Any) -> int:
    """Rows PostgreSQL actually pulled from junk_items to answer the statement."""
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).scalar()
    scans = [n for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "junk_items"]
    assert len(scans) == 1
    assert scans[0]["Node Type"] in ("Index Scan", "Index Only Scan")
    assert scans[0]["Index Name"] == "ix_junk_items_owner_id_id"
    return int(scans[0]["Actual Rows"])


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


# --- tokens and scopes ------------------------------------------------------------------------

_ROUTES = [
    ("get", "/junk", "junk:read"),
    ("post", "/junk", "junk:write"),
    ("get", "/junk/{id}", "junk:read"),
    ("patch", "/junk/{id}", "junk:write"),
    ("delete", "/junk/{id}", "junk:write"),
]


def _call(client: FlaskClient, method: str, path: str, item_id: int, headers: Any) -> Any:
    body = {"name": "changed"} if method in ("post", "patch") else None
    return getattr(client, method)(path.format(id=item_id), json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "needed"), _ROUTES)
def test_every_verb_enforces_its_scope(
    app: Flask, actions: Actions, method: str, path: str, needed: str
) -> None:
    owner = _sign_in(actions, "alice")
    item = _create(actions.client, owner, name="original")
    other = "junk:write" if needed == "junk:read" else "junk:read"
    oauth_client = owner.login["client"]
    narrow = actions.token(oauth_client, "alice", scope=other).json["access_token"]
    response = _call(actions.client, method, path, item["id"], actions.bearer(narrow))
    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert _count(app) == 1
    assert actions.client.get(f"/junk/{item['id']}", headers=owner.headers).json == item
    enough = actions.token(oauth_client, "alice", scope=needed).json["access_token"]
    allowed = _call(actions.client, method, path, item["id"], actions.bearer(enough))
    assert allowed.status_code in (200, 201, 204)


@pytest.mark.parametrize(("method", "path", "_needed"), _ROUTES)
def test_every_verb_wants_a_valid_token(
    client: FlaskClient, alice: Caller, method: str, path: str, _needed: str
) -> None:
    item = _create(client, alice)
    bare = _call(client, method, path, item["id"], {})
    assert bare.status_code == 401
    assert bare.headers["WWW-Authenticate"] == BARE_CHALLENGE
    forged = alice.token[:-4] + ("AAAA" if not alice.token.endswith("AAAA") else "BBBB")
    for token in ("garbage", forged):
        bad = _call(client, method, path, item["id"], {"Authorization": f"Bearer {token}"})
        assert bad.status_code == 401
        assert bad.json["error"] == "invalid_token"
        assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]


def test_a_client_token_without_a_user_cannot_use_junk(actions: Actions) -> None:
    oauth_client = actions.oauth_client("service")
    response = actions.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=oauth_client.auth
    )
    headers = actions.bearer(response.json["access_token"])
    for refused in (
        actions.client.get("/junk", headers=headers),
        actions.client.post("/junk", json={"name": "x"}, headers=headers),
    ):
        assert refused.status_code == 403
        assert refused.json["error"] == "insufficient_scope"
        challenge = refused.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="tokenserver", error="insufficient_scope"')


def test_disabled_users_tokens_stop_working_at_once(
    app: Flask, client: FlaskClient, alice: Caller
) -> None:
    item = _create(client, alice)
    with app.app_context():
        accounts.set_disabled("alice", True)
    response = client.get(f"/junk/{item['id']}", headers=alice.headers)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"


def test_revoked_token_stops_working(client: FlaskClient, alice: Caller) -> None:
    client.post("/oauth/revoke", data={"token": alice.token}, auth=alice.login["client"].auth)
    assert client.get("/junk", headers=alice.headers).status_code == 401


# --- lifecycle --------------------------------------------------------------------------------


def test_items_outlive_the_token_that_made_them(actions: Actions) -> None:
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False):
        alice = _sign_in(actions, "alice")
        item = _create(actions.client, alice)
    with time_machine.travel(start + timedelta(hours=1), tick=False):
        assert actions.client.get("/junk", headers=alice.headers).status_code == 401
        fresh = actions.token(alice.login["client"]).json["access_token"]
        page = actions.client.get("/junk", headers=actions.bearer(fresh)).json
    assert page["items"] == [item]


def test_deleting_a_user_deletes_their_items_only(
    app: Flask, client: FlaskClient, alice: Caller, bob: Caller
) -> None:
    _store(app, alice.id, 3)
    _store(app, bob.id, 2)
    with app.app_context():
        db.session.delete(db.session.get(User, alice.id))
        db.session.commit()
    assert _count(app, alice.id) == 0
    assert _count(app, bob.id) == 2


# --- concurrency against real gunicorn --------------------------------------------------------


def _patch_many(
    server: LiveServer, caller: Caller, item_id: int, bodies: list[dict[str, str]], start: Any
) -> list[requests.Response]:
    with requests.Session() as session:
        session.headers.update(caller.headers)
        start.wait()
        return [session.patch(f"{server.url}/junk/{item_id}", json=b, timeout=30) for b in bodies]


def _race(
    server: LiveServer,
    caller: Caller,
    item_id: int,
    a: list[dict[str, str]],
    b: list[dict[str, str]],
) -> tuple[list[requests.Response], list[requests.Response]]:
    start = threading.Barrier(2)
    results: dict[str, list[requests.Response]] = {}

    def run(key: str, bodies: list[dict[str, str]]) -> None:
        results[key] = _patch_many(server, caller, item_id, bodies, start)

    threads = [threading.Thread(target=run, args=args) for args in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results["a"], results["b"]


def test_concurrent_patches_to_different_fields_lose_nothing(
    live_server: LiveServer, alice: Caller
) -> None:
    created = requests.post(
        f"{live_server.url}/junk", json={"name": "start"}, headers=alice.headers, timeout=10
    )
    item_id = created.json()["id"]
    names = [{"name": f"name-{i}"} for i in range(25)]
    descriptions = [{"description": f"description-{i}"} for i in range(25)]
    a, b = _race(live_server, alice, item_id, names, descriptions)
    assert [r.status_code for r in a + b] == [200] * 50
    final = requests.get(f"{live_server.url}/junk/{item_id}", headers=alice.headers, timeout=10)
    assert final.json()["name"] == "name-24"
    assert final.json()["description"] == "description-24"
    assert final.json()["created_at"] == created.json()["created_at"]


def test_concurrent_patches_to_one_field_last_write_wins(
    live_server: LiveServer, alice: Caller
) -> None:
    created = requests.post(
        f"{live_server.url}/junk", json={"name": "start"}, headers=alice.headers, timeout=10
    )
    item_id = created.json()["id"]
    ours = [{"name": f"a-{i}", "description": f"a-{i}"} for i in range(25)]
    theirs = [{"name": f"b-{i}", "description": f"b-{i}"} for i in range(25)]
    a, b = _race(live_server, alice, item_id, ours, theirs)
    assert [r.status_code for r in a + b] == [200] * 50
    final = requests.get(f"{live_server.url}/junk/{item_id}", headers=alice.headers, timeout=10)
    # The item is exactly what the last committed PATCH returned, never a mix of two writes.
    assert final.json() in (a[-1].json(), b[-1].json())
    assert final.json()["name"] == final.json()["description"]
