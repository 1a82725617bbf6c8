"""docs/api.md: the API reference, rendered from the OpenAPI document so the two never differ.

python -m tokenserver.openapi.markdown > docs/api.md (tests/test_openapi.py checks it is current)
"""

from __future__ import annotations

import sys
from typing import Any

from . import build_document

_METHODS = ("get", "post", "put", "patch", "delete")
_ISSUER = "https://auth.example.com"


def render(document: dict[str, Any]) -> str:
    """The reference: every operation by tag, then every schema with its fields."""
    info = document["info"]
    lines = [
        "# API reference",
        "",
        f"{info['summary']} {info['description']}",
        "",
        "Generated from `GET /openapi.json` (`tokenserver/openapi/`) by "
        "`python -m tokenserver.openapi.markdown`; the document itself is the machine-readable "
        "form, validated against every response the test suite sees.",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                operation = item[method]
                by_tag.setdefault(operation.get("tags", ["other"])[0], []).append(
                    (method, path, operation)
                )
    for tag in [t["name"] for t in document["tags"]]:
        lines += [f"## {tag}", ""]
        for method, path, operation in by_tag.get(tag, []):
            lines += _operation(method, path, operation, document["components"]["responses"])
    lines += ["## Schemas", ""]
    for name, schema in document["components"]["schemas"].items():
        lines += _schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


def _operation(
    method: str, path: str, operation: dict[str, Any], shared: dict[str, Any]
) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
    if operation.get("description"):
        lines += [operation["description"], ""]
    security = [name for option in operation.get("security", []) for name in option]
    if security:
        lines += [f"Authentication: {', '.join(f'`{name}`' for name in security)}", ""]
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"Body ({media}): {_type(content.get('schema', {}))}", ""]
    lines += ["| status | answer |", "|---|---|"]
    for status, given in operation.get("responses", {}).items():
        response: dict[str, Any] = shared[_ref(given)] if "$ref" in given else given
        text = response.get("description", "")
        contents: list[dict[str, Any]] = list(response.get("content", {}).values())
        schema = contents[0].get("schema") if contents else None
        if schema:
            text += f" ({_type(schema)})"
        lines.append(f"| {status} | {_cell(text)} |")
    return [*lines, ""]


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    properties = schema.get("properties")
    if not properties:
        return [*lines, _type(schema), ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | meaning |", "|---|---|---|---|"]
    for field, spec in properties.items():
        mark = "yes" if field in required else ""
        meaning = _cell(spec.get("description", ""))
        lines.append(f"| `{field}` | {_cell(_type(spec))} | {mark} | {meaning} |")
    return [*lines, ""]


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"[{_ref(schema)}](#{_ref(schema).lower()})"
    if "enum" in schema:
        return " or ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    for combined in ("oneOf", "anyOf"):
        if combined in schema:
            return " or ".join(_type(option) for option in schema[combined])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(kind)


def _ref(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(render(build_document(_ISSUER)))
