"""Request and response validation against an OpenAPI 3.0 document (the Jira sandbox uses it).

- ``find_operation(method, path)`` matches a concrete path against the spec's path templates
  (``/rest/api/3/issue/{issueIdOrKey}``); literal segments win over templated ones, so
  ``/rest/api/3/issue/bulk`` is not mistaken for an issue key.
- ``validate_request`` checks query parameters (required, type, enum, array items) and the JSON body
  against the operation's ``requestBody`` schema.
- ``validate_response`` checks a JSON body against the documented schema for that status.

Schemas are validated with jsonschema's Draft 4 validator (OpenAPI 3.0's schema object is an extended
subset of Draft 4, e.g. boolean ``exclusiveMaximum``). ``$ref``s such as ``#/components/schemas/X``
resolve inside the whole spec document through a ``referencing`` registry. OpenAPI 3.0's
``nullable: true`` is translated once, when the validator is built: the type list gains ``"null"``
(an ``enum`` gains ``None``; a schema with no ``type`` becomes ``anyOf [schema, {type: null}]``).
Compiled validators are cached per operation, location and status. With ``fast=True`` a schema is first checked
with a fastjsonschema function compiled from the same (translated) document, formats ignored as jsonschema ignores
them here; only an instance it rejects goes through jsonschema, which words the errors (and has the last word).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import fastjsonschema
import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_URI = "urn:connector-pipelines:openapi-spec"
_MISSING = object()
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


class RequestValidationError(Exception):
    """The request does not match the spec: ``messages`` (general) and ``field_errors`` (by parameter)."""

    def __init__(self, messages: list[str], field_errors: dict[str, str] | None = None):
        self.messages = messages
        self.field_errors = field_errors or {}
        super().__init__("; ".join(messages + [f"{k}: {v}" for k, v in self.field_errors.items()]))


class ResponseValidationError(AssertionError):
    """A response the sandbox produced does not match the documented schema (a sandbox bug)."""


@dataclass(frozen=True)
class Operation:
    method: str            # lower case
    template: str          # the spec's path template
    path_params: dict[str, str]
    spec: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def operation_id(self) -> str | None:
        return self.spec.get("operationId")

    @property
    def pointer(self) -> str:
        return "/paths/" + _escape_pointer(self.template) + "/" + self.method


def _escape_pointer(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


def translate_nullable(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` into plain JSON Schema (in place; returns the node)."""
    if isinstance(node, list):
        for item in node:
            translate_nullable(item)
        return node
    if not isinstance(node, dict):
        return node
    for value in node.values():
        translate_nullable(value)
    if node.get("nullable") is True:
        node.pop("nullable")
        if "type" in node:
            t = node["type"]
            node["type"] = list(dict.fromkeys((t if isinstance(t, list) else [t]) + ["null"]))
            if "enum" in node and None not in node["enum"]:
                node["enum"] = list(node["enum"]) + [None]
        else:
            inner = {k: node.pop(k) for k in list(node) if k not in ("description", "example", "readOnly",
                                                                     "writeOnly", "deprecated")}
            node["anyOf"] = [inner, {"type": "null"}]
    elif node.get("nullable") is False:
        node.pop("nullable")
    return node


def _format_error(err: jsonschema.ValidationError, root: str) -> str:
    where = root + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in err.absolute_path)
    message = err.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{where}: {message}"


def _best_errors(validator: jsonschema.protocols.Validator, instance: Any, root: str, limit: int = 5) -> list[str]:
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(list(e.absolute_path)), e.message))
    return [_format_error(e, root) for e in errors[:limit]]


class OpenApiValidator:
    """Validation against one OpenAPI 3.0 document (loaded JSON)."""

    def __init__(self, spec: Mapping[str, Any], *, fast: bool = False):
        self._raw = spec
        self._fast = fast
        self._fast_checks: dict[str, Any] = {}
        self._found: dict[tuple[str, str], Operation | None] = {}
        self._doc = translate_nullable(copy.deepcopy(dict(spec)))
        resource = Resource(contents=self._doc, specification=DRAFT4)
        self._registry: Registry = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[tuple[str, ...], jsonschema.protocols.Validator] = {}
        self._lock = threading.Lock()
        self._routes: list[tuple[int, int, re.Pattern[str], str, list[str]]] = []
        for template in self._doc.get("paths", {}):
            names = re.findall(r"{([^}/]+)}", template)
            parts = re.split(r"{[^}/]+}", template)
            regex = "^" + "([^/]+)".join(re.escape(part) for part in parts) + "$"
            literal = len("".join(parts))
            self._routes.append((len(names), -literal, re.compile(regex), template, names))
        self._routes.sort(key=lambda r: (r[0], r[1]))

    # -- operations ---------------------------------------------------------------------------------
    def find_operation(self, method: str, path: str) -> Operation | None:
        """The operation for a concrete path (no query string), or None if the spec has no such route.

        Answers are memoized per (method, path) (bounded): matching scans every path template."""
        key = (method.lower(), path)
        hit = self._found.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        op = self._find_operation(method, path)
        with self._lock:
            if len(self._found) >= 4096:
                self._found.clear()
            self._found[key] = op
        return op

    def _find_operation(self, method: str, path: str) -> Operation | None:
        m = method.lower()
        path = path.rstrip("/") or "/"
        for _n, _lit, regex, template, names in self._routes:
            match = regex.match(path)
            if not match:
                continue
            item = self._doc["paths"][template]
            if m not in item:
                continue
            params = dict(zip(names, match.groups(), strict=True))
            return Operation(m, template, params, item[m])
        return None

    def path_exists(self, path: str) -> bool:
        path = path.rstrip("/") or "/"
        return any(route[2].match(path) for route in self._routes)

    def _parameters(self, op: Operation) -> list[dict[str, Any]]:
        item = self._doc["paths"][op.template]
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for p in list(item.get("parameters", [])) + list(op.spec.get("parameters", [])):
            if "$ref" in p:
                p = self._resolve_local(p["$ref"])
            merged[(p.get("in", ""), p.get("name", ""))] = p
        return list(merged.values())

    def _resolve_local(self, ref: str) -> Any:
        node: Any = self._doc
        for part in ref.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _validator(self, key: tuple[str, ...], pointer: str) -> jsonschema.protocols.Validator:
        with self._lock:
            v = self._validators.get(key)
            if v is None:
                schema = {"$ref": SPEC_URI + "#" + quote(pointer, safe="/~")}
                v = jsonschema.Draft4Validator(schema, registry=self._registry)
                self._validators[key] = v
            return v

    def _fast_valid(self, pointer: str, instance: Any) -> bool:
        """With ``fast``: True when the compiled fastjsonschema check accepts ``instance`` (False: ask jsonschema)."""
        if not self._fast:
            return False
        with self._lock:
            check = self._fast_checks.get(pointer)
            if check is None:
                root = {**self._doc, "$schema": "http://json-schema.org/draft-04/schema#", "$ref": "#" + pointer}
                check = fastjsonschema.compile(root, use_formats=False)
                self._fast_checks[pointer] = check
        try:
            check(instance)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def schema_errors(self, pointer: str, instance: Any, root: str = "response", limit: int = 5) -> list[str]:
        """Errors of ``instance`` against the schema at a JSON pointer of the spec (``/components/schemas/X``);
        the compiled validator is cached per pointer. [] when it matches."""
        if self._fast_valid(pointer, instance):
            return []
        validator = self._validator(("schema", pointer), pointer)
        if validator.is_valid(instance):
            return []
        return _best_errors(validator, instance, root, limit)

    # -- requests -----------------------------------------------------------------------------------
    def validate_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Sequence[str]] | None = None,
        body: Any = None,
        *,
        has_body: bool = False,
    ) -> Operation:
        """Validate query parameters and JSON body; returns the operation or raises RequestValidationError.

        ``query`` maps each parameter name to its values (repeated parameters give several values).
        """
        op = self.find_operation(method, path)
        if op is None:
            raise RequestValidationError([f"No operation {method.upper()} {path} in the API specification"])
        messages: list[str] = []
        field_errors: dict[str, str] = {}
        query = query or {}
        for p in self._parameters(op):
            if p.get("in") != "query":
                continue
            name = p["name"]
            values = list(query.get(name, []))
            if not values:
                if p.get("required"):
                    field_errors[name] = f"The '{name}' query parameter is required."
                continue
            schema = p.get("schema") or {}
            problem = _check_query_value(name, values, schema)
            if problem:
                field_errors[name] = problem
        body_spec = op.spec.get("requestBody")
        if body_spec:
            content = body_spec.get("content", {})
            media = content.get("application/json") or next(iter(content.values()), None)
            if not has_body:
                if body_spec.get("required"):
                    messages.append("No content to map due to end-of-input")
            elif media and "schema" in media:
                ctype = "application/json" if "application/json" in content else next(iter(content))
                pointer = op.pointer + "/requestBody/content/" + _escape_pointer(ctype) + "/schema"
                if not self._fast_valid(pointer, body):
                    validator = self._validator((op.method, op.template, "request"), pointer)
                    messages.extend(_best_errors(validator, body, "body"))
        if messages or field_errors:
            raise RequestValidationError(messages, field_errors)
        return op

    # -- responses ----------------------------------------------------------------------------------
    def response_schema_pointer(self, op: Operation, status: int) -> str | None:
        responses = op.spec.get("responses", {})
        key = str(status) if str(status) in responses else (f"{str(status)[0]}XX" if f"{str(status)[0]}XX"
                                                            in responses else "default")
        resp = responses.get(key)
        if resp is None:
            return None
        if "$ref" in resp:
            return None
        content = resp.get("content") or {}
        media = content.get("application/json")
        if not media or not media.get("schema"):
            return None
        return op.pointer + "/responses/" + _escape_pointer(key) + "/content/application~1json/schema"

    def validate_response(self, method: str, path: str, status: int, body: Any) -> None:
        """Raise ResponseValidationError if ``body`` does not match the documented schema for ``status``.

        An undocumented status code is itself a mismatch; a documented status without a schema passes.
        """
        op = self.find_operation(method, path)
        if op is None:
            raise ResponseValidationError(f"No operation {method.upper()} {path} in the API specification")
        responses = op.spec.get("responses", {})
        if str(status) not in responses and f"{str(status)[0]}XX" not in responses and "default" not in responses:
            raise ResponseValidationError(f"{method.upper()} {op.template}: status {status} is not documented "
                                          f"(documented: {sorted(responses)})")
        pointer = self.response_schema_pointer(op, status)
        if pointer is None:
            return
        if self._fast_valid(pointer, body):
            return
        validator = self._validator((op.method, op.template, "response", str(status)), pointer)
        errors = _best_errors(validator, body, "response")
        if errors:
            raise ResponseValidationError(f"{method.upper()} {op.template} -> {status}: " + "; ".join(errors))


def _coerce_scalar(value: str, schema: Mapping[str, Any]) -> tuple[bool, Any]:
    t = schema.get("type")
    if t == "integer":
        try:
            return True, int(value)
        except ValueError:
            return False, None
    if t == "number":
        try:
            return True, float(value)
        except ValueError:
            return False, None
    if t == "boolean":
        if value.lower() in ("true", "false"):
            return True, value.lower() == "true"
        return False, None
    return True, value


def _check_query_value(name: str, values: list[str], schema: Mapping[str, Any]) -> str | None:
    if schema.get("type") == "array":
        item_schema = schema.get("items") or {}
        items = [part for v in values for part in v.split(",")] if item_schema.get("type") != "string" else values
        for raw in items:
            ok, val = _coerce_scalar(raw, item_schema)
            if not ok:
                return f"'{raw}' is not a valid {item_schema.get('type')} value for '{name}'."
            if "enum" in item_schema and val not in item_schema["enum"]:
                return f"'{raw}' is not an allowed value for '{name}'."
        return None
    raw = values[-1]
    ok, val = _coerce_scalar(raw, schema)
    if not ok:
        return f"The value '{raw}' is not a valid {schema.get('type')} for the '{name}' parameter."
    if "enum" in schema and val not in schema["enum"]:
        return f"The value '{raw}' of '{name}' is not one of {schema['enum']}."
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        if "minimum" in schema and val < schema["minimum"]:
            return f"'{name}' must be at least {schema['minimum']}."
        if "maximum" in schema and val > schema["maximum"]:
            return f"'{name}' must be at most {schema['maximum']}."
    if isinstance(val, str) and "maxLength" in schema and len(val) > schema["maxLength"]:
        return f"'{name}' must be at most {schema['maxLength']} characters."
    return None


__all__ = ["OpenApiValidator", "Operation", "RequestValidationError", "ResponseValidationError",
           "translate_nullable"]
