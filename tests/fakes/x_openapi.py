"""Requests checked against X's own OpenAPI document (``/work/shared/platform-specs``, v2.159):
the path matches a documented path template and method, every query parameter is declared by the
operation and its value validates against the parameter's schema (arrays are comma-separated, as
X's ``style: form, explode: false`` says), required parameters are present, and a JSON or
multipart body validates against the operation's ``requestBody`` schema (jsonschema-rs, Draft
2020-12, with the document's ``components`` as the reference target; multipart fields are checked
as strings, file parts included).

The OAuth token endpoint is not in the document (only its URL, in ``securitySchemes``), so
:func:`problems` accepts it when the URL matches and checks its form by hand.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs

SPEC_PATH = Path("/work/shared/platform-specs/x-openapi.json")
TOKEN_PATH = "/2/oauth2/token"
AUTHORIZE_PATH = "/i/oauth2/authorize"


@functools.cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return data


def _template(path: str) -> re.Pattern[str]:
    parts = (
        f"(?P<{p[1:-1].replace('.', '_')}>[^/]+)" if p.startswith("{") else re.escape(p)
        for p in path.split("/")
    )
    return re.compile("^" + "/".join(parts) + "$")


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    # literal paths first, so /2/tweets/search/recent is not taken for /2/tweets/{id}
    paths = sorted(spec()["paths"], key=lambda p: (p.count("{"), p))
    return [(_template(p), p) for p in paths]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        section, name = node["$ref"].split("/")[-2:]
        node = spec()["components"][section][name]
    return node


@functools.cache
def _validator(ref_json: str) -> Any:
    schema = {"$ref": json.loads(ref_json), "components": spec()["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


def _schema_problems(schema: dict[str, Any], value: Any, where: str) -> list[str]:
    """Inline schemas may hold refs too: each is validated inside the document's components."""
    if "$ref" in schema:
        validator = _validator(json.dumps(schema["$ref"]))
    else:
        validator = jsonschema_rs.Draft202012Validator(
            {**schema, "components": spec()["components"]}
        )
    return [f"{where}: {error.message}" for error in validator.iter_errors(value)]


def operation(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """The documented (template, operation, path parameters) ``path`` matches."""
    for pattern, template in _templates():
        match = pattern.match(path)
        if match:
            op = spec()["paths"][template].get(method.lower())
            if op is not None:
                return template, op, match.groupdict()
    return None


def _query_value(schema: dict[str, Any], raw: str) -> Any:
    schema = _resolve(schema)
    if schema.get("type") == "array":
        return [_query_value(schema.get("items", {}), part) for part in raw.split(",")]
    if schema.get("type") == "integer":
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def problems(
    method: str,
    path: str,
    query: dict[str, list[str]],
    content_type: str,
    body: bytes,
) -> list[str]:
    """Why this request does not conform to the document; empty when it does."""
    if path == TOKEN_PATH and method == "POST":
        if content_type.startswith("application/x-www-form-urlencoded"):
            return []
        return [f"{path}: the token endpoint takes a form, not {content_type}"]
    if path == AUTHORIZE_PATH:
        return []
    found = operation(method, path)
    if found is None:
        return [f"{method} {path}: no such operation in the document"]
    template, op, path_params = found
    errors = _path_problems(template, op, path_params) + _query_problems(template, op, query)
    return _body_problems(template, op, errors, content_type, body)


def _path_problems(template: str, op: dict[str, Any], values: dict[str, str]) -> list[str]:
    errors = []
    for param in op.get("parameters", []):
        param = _resolve(param)
        if param["in"] == "path":
            value = values.get(param["name"].replace(".", "_"), "")
            errors += _schema_problems(param.get("schema", {}), value, f"path {param['name']}")
    return errors


def _query_problems(template: str, op: dict[str, Any], query: dict[str, list[str]]) -> list[str]:
    declared: dict[str, dict[str, Any]] = {}
    for param in op.get("parameters", []):
        param = _resolve(param)
        if param["in"] == "query":
            declared[param["name"]] = param
    errors = []
    for name, values in query.items():
        if name not in declared:
            errors.append(f"{template}: undeclared query parameter {name!r}")
            continue
        if len(values) != 1:
            errors.append(f"{template}: {name} given {len(values)} times")
        schema = declared[name].get("schema", {})
        errors += _schema_problems(schema, _query_value(schema, values[0]), f"query {name}")
    errors += [
        f"{template}: required query parameter {name!r} missing"
        for name, param in declared.items()
        if param.get("required") and name not in query
    ]
    return errors


def _body_problems(
    template: str, op: dict[str, Any], errors: list[str], content_type: str, body: bytes
) -> list[str]:
    request_body = op.get("requestBody")
    if request_body is None:
        if body:
            errors.append(f"{template}: a body where the operation takes none")
        return errors
    media = content_type.split(";")[0].strip()
    content = request_body.get("content", {})
    if media not in content:
        return [*errors, f"{template}: content type {media!r} not documented"]
    if media == "multipart/form-data":
        fields = multipart_fields(content_type, body)
        if fields is None:
            return [*errors, f"{template}: an unreadable multipart body"]
        value = {name: data.decode("latin-1") for name, data in fields.items()}
        return errors + _schema_problems(content[media]["schema"], value, f"body of {template}")
    if media != "application/json":
        return [*errors, f"{template}: only JSON and multipart bodies are checked, got {media!r}"]
    try:
        value = json.loads(body)
    except ValueError:
        return [*errors, f"{template}: the body is not JSON"]
    return errors + _schema_problems(content[media]["schema"], value, f"body of {template}")


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_NAME = re.compile(rb'[; ]name="([^"]*)"')


def multipart_fields(content_type: str, body: bytes) -> dict[str, bytes] | None:
    """The fields of a ``multipart/form-data`` body by name (RFC 7578); ``None`` when it cannot
    be read (no boundary, a part without headers or name, no closing delimiter)."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    parts = body.split(b"--" + found.group(1).encode("latin-1"))
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        return None
    fields: dict[str, bytes] = {}
    for part in parts[1:-1]:
        head, sep, value = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = _NAME.search(head)
        if not sep or name is None or not value.endswith(b"\r\n"):
            return None
        fields[name.group(1).decode("utf-8")] = value[:-2]
    return fields
