"""The page cursor codec: round trips, and every kind of damage is a 400 naming `cursor`."""

from __future__ import annotations

import json

import pytest

from tokenserver import cursors
from tokenserver.errors import InvalidRequest

from .helpers import b64url


@pytest.mark.parametrize(("owner", "after"), [(1, 1), (7, 12345), (cursors.MAX_ID, cursors.MAX_ID)])
def test_cursor_round_trips(owner: int, after: int) -> None:
    cursor = cursors.encode(owner, after)
    assert cursors.decode(cursor, owner) == after


def test_cursor_is_url_safe_text() -> None:
    cursor = cursors.encode(42, 99)
    assert cursor.replace("-", "").replace("_", "").replace(".", "").isalnum()


def _flip(cursor: str, index: int) -> str:
    swapped = "A" if cursor[index] != "A" else "B"
    return cursor[:index] + swapped + cursor[index + 1 :]


def _forged(payload: dict[str, object]) -> str:
    """A cursor with a chosen payload but the checksum of a real one."""
    real = cursors.encode(1, 5)
    return b64url(json.dumps(payload).encode()) + "." + real.split(".")[1]


_GOOD = cursors.encode(1, 5)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "garbage",
        "a.b",
        ".",
        _GOOD + "x",
        _GOOD + "=",
        _GOOD.replace(".", ""),
        _GOOD + "." + _GOOD,
        _flip(_GOOD, 3),
        _flip(_GOOD, len(_GOOD) - 2),
        _GOOD.split(".")[0] + "." + b64url(b"\x00" * 12),
        _forged({"v": 1, "o": 1, "a": 6}),
        "x" * 5000,
        "é" + _GOOD,
        _GOOD.upper(),
    ],
)
def test_damaged_cursor_is_refused_naming_cursor(cursor: str) -> None:
    with pytest.raises(InvalidRequest, match="'cursor'"):
        cursors.decode(cursor, 1)


def test_cursor_of_another_owner_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="'cursor'"):
        cursors.decode(cursors.encode(1, 5), 2)


@pytest.mark.parametrize("after", [0, -1, cursors.MAX_ID + 1, True, 1.0, "5", None])
def test_cursor_with_an_impossible_position_is_refused(after: object) -> None:
    payload = json.dumps({"v": 1, "o": 1, "a": after}).encode()
    cursor = b64url(payload) + "." + b64url(cursors._check(payload))
    with pytest.raises(InvalidRequest, match="'cursor'"):
        cursors.decode(cursor, 1)
