"""Reading request bodies: a JSON object (or a form where allowed) with known fields only, and
an OAuth request's parameters as those sent with a value.

Also the one parser for every JSON document from outside (bodies, JWT payloads, key sets).
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request
from werkzeug.datastructures import ImmutableMultiDict, MultiDict

from .errors import APIError, InvalidRequest

_MAX_JSON_DEPTH = 20
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def read_fields(allowed: frozenset[str], *, allow_form: bool = False) -> dict[str, Any]:
    """The body's fields, refusing other media types, malformed JSON and unknown fields."""
    mimetype = request.mimetype
    form = allow_form and mimetype == "application/x-www-form-urlencoded"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        data = _json_object()
    elif form:
        require_utf8_body()
        data = {key: request.form.getlist(key) for key in request.form}
    else:
        accepted = "application/json" + (
            " or application/x-www-form-urlencoded" if allow_form else ""
        )
        raise APIError(f"send the body as {accepted}", status=415, error="unsupported_media_type")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequest(_unknown_field(unknown[0], allowed))
    if form:
        for key, values in data.items():
            if len(values) != 1:
                raise InvalidRequest(f"'{key}' must be given once")
            data[key] = values[0]
    for key, value in data.items():
        if not _storable(value):
            raise InvalidRequest(f"'{key}' holds a NUL character or a lone surrogate")
    return data


def require_utf8_body() -> None:
    """A 400 if the body is not UTF-8: Werkzeug parses such a form as an empty one, which would
    read as fields left out."""
    try:
        request.get_data(cache=True).decode()  # the form is then parsed from this copy
    except UnicodeDecodeError:
        raise InvalidRequest("the body must be UTF-8") from None


# RFC 7009 §2.2, RFC 7662 §2.2: an empty `token` is a token no one holds, answered as one we do
# not know (200, inactive), not as a request without one (README).
_KEPT_EMPTY = frozenset({"token"})


def given(parameters: MultiDict[str, str]) -> MultiDict[str, str]:
    """The parameters sent with a value: every OAuth endpoint reads its request through this.

    RFC 6749 §3.1, §3.2 (and OpenID Connect Core §3.1.2.1 after them): "Parameters sent without
    a value MUST be treated as if they were omitted from the request."
    """
    if all(value or name in _KEPT_EMPTY for name, value in parameters.items(multi=True)):
        return parameters
    return ImmutableMultiDict(
        [
            (name, value)
            for name, value in parameters.items(multi=True)
            if value or name in _KEPT_EMPTY
        ]
    )


def _unknown_field(name: str, allowed: frozenset[str]) -> str:
    # Named only if it reads as a field name: JSON sent as a form arrives as one field named by
    # the whole body, password and all, and an error never echoes what was submitted.
    if _FIELD_NAME.fullmatch(name):
        return f"unknown field '{name}'"
    return f"the body holds an unknown field; allowed: {', '.join(sorted(allowed))}"


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than any we accept."""


def parse_json(raw: bytes | str, *, unique: bool = False) -> Any:
    """A JSON document from outside (RFC 8259: no NaN or Infinity); ValueError, like any bad
    JSON, if it is nested too deeply.

    Python's parser recurses once per level, so `[[[...]]]` a few thousand deep exhausts the
    stack (a RecursionError, which no `except ValueError` catches: a 500). The depth is
    counted first, on the text: bytes are decoded as json.loads would decode them, since in
    UTF-16 a character's bytes can pass for a quote or a backslash and hide brackets. With
    `unique`, an object that names a member twice is refused too (RepeatedName).
    """
    text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    brackets = text.count("[") + text.count("{")
    if brackets > _MAX_JSON_DEPTH and _nesting_depth(text) > _MAX_JSON_DEPTH:
        raise JSONTooDeep(f"JSON nested deeper than {_MAX_JSON_DEPTH} levels")
    return (_UNIQUE_DECODER if unique else _DECODER).decode(text)


def _not_json(constant: str) -> Any:
    # Python's parser takes NaN, Infinity and -Infinity, which RFC 8259 §6 leaves out of JSON.
    raise ValueError(f"{constant} is not a JSON value")


class RepeatedName(ValueError):
    """A JSON object that names one member twice."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    @property
    def description(self) -> str:
        """What an error answer says: the name only if it reads as a field name, as
        _unknown_field does, since an error never echoes what was submitted."""
        field = f"'{self.name}'" if _FIELD_NAME.fullmatch(self.name) else "each field"
        return f"{field} must be given once"


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Refused rather than the last one kept (RFC 8259 §4: what a reader makes of it is
    # unpredictable): a filter in front that reads the first would judge another body than ours.
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise RepeatedName(name)
        seen.add(name)
    return dict(pairs)


# Made once: json.loads given any option builds a decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)
_UNIQUE_DECODER = json.JSONDecoder(parse_constant=_not_json, object_pairs_hook=_unique_members)


def _json_object() -> dict[str, Any]:
    try:
        data = parse_json(request.get_data(cache=True), unique=True)
    except JSONTooDeep:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except RepeatedName as exc:
        raise InvalidRequest(exc.description) from None
    except ValueError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the JSON body must be an object")
    return data


def _storable(value: Any) -> bool:
    """Whether every string in a JSON value can be stored as text by every database we run on.

    JSON may spell both a NUL character and half a surrogate pair, but PostgreSQL text takes
    neither (and UTF-8 cannot hold the second): refused here, they never become a 500.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def _nesting_depth(text: str) -> int:
    """Bracket depth, counted before parsing so a deeply nested document cannot exhaust the
    stack."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def require_string(
    data: dict[str, Any], field: str, *, max_length: int, min_length: int = 0
) -> str:
    """A string field within length bounds, or a 400 naming the field."""
    if field not in data:
        raise InvalidRequest(f"'{field}' is required")
    value = data[field]
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string")
    if len(value) < min_length:
        raise InvalidRequest(f"'{field}' must be at least {min_length} characters")
    if len(value) > max_length:
        raise InvalidRequest(f"'{field}' must be at most {max_length} characters")
    return value
