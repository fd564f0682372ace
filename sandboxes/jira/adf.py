"""Atlassian Document Format: the official ADF JSON schema compiled once (``adf_validator``), ADF to
plain text (``adf_text``, for search and webhook payloads) and plain text to ADF (``text_adf``, REST v2)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import fastjsonschema

from sandboxes.specs import load_json_spec

ADF_SPEC = "adf-schema-full.json"
ADF_MESSAGE = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"


def adf_text(node: Any) -> str:
    """All text in an ADF document (for text search and webhook payloads)."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        parts = [node["text"]] if isinstance(node.get("text"), str) else []
        parts += [adf_text(c) for c in node.get("content") or []]
        sep = "\n" if node.get("type") in ("doc",) else " " if node.get("type") in ("tableRow",) else ""
        return sep.join(p for p in parts if p)
    return ""


def text_adf(text: str) -> dict[str, Any]:
    """Plain text as ADF: a paragraph per blank-line-separated block, a hardBreak per line break."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip("\n")) if b.strip()]
    content = []
    for block in blocks:
        nodes: list[dict[str, Any]] = []
        for line in block.split("\n"):
            if nodes:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


# In the code fastjsonschema generates, the element path every call and message carries, e.g.
# ``(name_prefix or "data") + "[{data_x}]".format(**locals())``: formatted on every $ref call, valid or not.
_ELEMENT_PATH = re.compile(r'\(name_prefix or "data"\) \+ "[^"\\]*"\.format\(\*\*locals\(\)\)')


@functools.lru_cache(maxsize=1)
def adf_validator() -> Callable[[Any], Any]:
    """The official ADF JSON schema (draft-04), compiled once per process; raises
    ``fastjsonschema.JsonSchemaException`` for a value that is not ADF. For verdicts only: Jira answers one
    message for any invalid document (``ADF_MESSAGE``), so the schema's own wording is never shown.

    fastjsonschema, not jsonschema, because a table-bearing description costs ~1.3 s in jsonschema's
    interpreter (the schema is a wide anyOf of $refs) and ~0.5 ms compiled: the same verdicts. Verdict-only
    code (``adf_verdicts_code``) halves that again: ~0.25 ms for the product's descriptions.
    """
    schema = load_json_spec(ADF_SPEC)
    namespace: dict[str, Any] = {}
    exec(compile(adf_verdicts_code(schema), ADF_SPEC, "exec"), namespace)  # noqa: S102
    validate = namespace["validate"]
    return _verdicts_by_shape(validate) if _shape_is_sound(schema) else validate


# A document's shape: its JSON with what no verdict depends on blanked. The schema constrains a ``text`` only to be a
# string, non-empty, and (a hardBreak's attrs) "\n"; an ``href`` or ``url`` only to be a string. So every non-empty
# text other than "\n" is one text, and every href or url one href (``_shape_is_sound`` checks this of the schema).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_TEXT = re.compile(r'"text":"(?!\\n")(?:[^"\\]|\\.)+"')
_LINK = re.compile(r'"(href|url)":"(?:[^"\\]|\\.)*"')
_SHAPE_STRINGS = {"text": [{"type": "string"}, {"type": "string", "minLength": 1}, {"enum": ["\n"]}],
                  "href": [{"type": "string"}], "url": [{"type": "string"}]}


def _shape_is_sound(schema: dict[str, Any]) -> bool:
    """Whether every ``properties`` entry for text, href and url is one of the constraints the shape assumes, and
    nothing else in the schema can see those values (no schema-valued additionalProperties or patternProperties)."""
    ok = True

    def walk(node: Any) -> None:
        nonlocal ok
        if isinstance(node, dict):
            if "patternProperties" in node or isinstance(node.get("additionalProperties"), dict):
                ok = False
            for name, constraint in (node.get("properties") or {}).items():
                if name in _SHAPE_STRINGS and constraint not in _SHAPE_STRINGS[name]:
                    ok = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return ok


def _verdicts_by_shape(validate: Callable[[Any], Any], limit: int = 10_000) -> Callable[[Any], Any]:
    """``validate``, answered from the verdict of an earlier document of the same shape (the product's descriptions
    differ in their texts and links only: one validation per kind of description). JSON values only: a value JSON
    cannot hold (or a cycle) is validated directly."""
    verdicts: dict[str, bool] = {}

    def check(data: Any) -> Any:
        try:
            shape = _LINK.sub(r'"\1":""', _TEXT.sub('"text":"_"', _ENCODE(data)))
        except (TypeError, ValueError):
            return validate(data)
        valid = verdicts.get(shape)
        if valid is None:
            try:
                validate(data)
                valid = True
            except fastjsonschema.JsonSchemaException:
                valid = False
            if len(verdicts) >= limit:
                verdicts.clear()
            verdicts[shape] = valid
        if not valid:
            raise fastjsonschema.JsonSchemaValueException("data is not an Atlassian Document")
        return data

    return check


def adf_verdicts_code(schema: dict[str, Any]) -> str:
    """fastjsonschema's Python code for ``schema`` without what only error messages use: no schema excerpt in
    each exception (``detailed_exceptions=False``) and no element path formatted on every call (each one
    becomes the plain prefix). The same branches, so the same verdict for every value
    (``test_adf_verdicts_match_the_reference_validator``); only messages lose the element's position."""
    code = fastjsonschema.compile_to_code(schema, detailed_exceptions=False)
    return _ELEMENT_PATH.sub('(name_prefix or "data")', code)
