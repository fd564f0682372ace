"""The official SDL (specs/monday-graphql-schema.graphql, API version 2026-10), built once per process, and the
documents clients send: parsed, validated against the SDL (graphql-core's ``validate``, the spec's rules) and
cached by query text (clients send the same text with different variables).

Validation errors answer HTTP 200 with graphql-ruby's wording and codes where monday's are known: an unknown
field -> ``Field 'pos' doesn't exist on type 'Board'`` with ``extensions: {code: "undefinedField", typeName,
fieldName}`` (seen in a monday answer quoted in trix-solutions/moncli#243, 2024). UNCONFIRMED: the other codes
(``argumentNotAccepted``, ``missingRequiredArguments``; anything else ``GRAPHQL_VALIDATION_FAILED`` with
graphql-js's wording), and a syntax error's (``GRAPHQL_PARSE_FAILED``, HTTP 200).

Complexity (the SDL declares ``@cost``/``@listSize`` but uses neither; monday does not publish its formula, so
this model is UNCONFIRMED apart from the documented 10,000 points of ``create_item``): every selected field costs
1, multiplied by the page sizes of the lists around it: ``limit`` where the field has one (``items_page``,
``next_items_page``, ``items_page_by_column_values``, ``items``, ``boards``, ``updates``), the number of
``ids`` given, else 25 for ``boards``/``items``/``updates`` and 10 for other lists (``column_values``,
``columns``, ``groups``...). A root mutation adds its base cost (create_item 10,000; the others 1,000).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    parse,
    validate,
)
from graphql.execution.values import get_argument_values

from sandboxes.specs import specs_dir

SDL_FILE = "monday-graphql-schema.graphql"
SDL_VERSION = "2026-10"
MUTATION_COST = {"create_item": 10_000, "create_subitem": 10_000}
DEFAULT_MUTATION_COST = 1_000
DEFAULT_PAGE = {"boards": 25, "items": 25, "updates": 25}
OTHER_LIST = 10


@cache
def schema() -> GraphQLSchema:
    with open(specs_dir() / SDL_FILE, encoding="utf-8") as f:
        return build_schema(f.read())


@dataclass
class Prepared:
    """One query text: its document, the validation errors (formatted), operations and fragments."""

    text: str
    errors: list[dict[str, Any]]
    operations: dict[str | None, OperationDefinitionNode] = field(default_factory=dict)
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)
    has_directives: bool = False
    needs_io: bool = False            # create_webhook sends the challenge: run off the event loop
    collect_cache: dict[Any, Any] = field(default_factory=dict)


_CACHE: OrderedDict[str, Prepared] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 512

_UNDEFINED = re.compile(r"^Cannot query field '([^']+)' on type '([^']+)'\.")
_UNKNOWN_ARG = re.compile(r"^Unknown argument '([^']+)' on field '([^'.]+)\.([^']+)'\.")
_MISSING_ARG = re.compile(r"^Field '([^']+)' argument '([^']+)' of type '[^']+' is required")


def _format_validation(err: GraphQLError) -> dict[str, Any]:
    msg = err.message
    out: dict[str, Any] = {}
    if m := _UNDEFINED.match(msg):
        out = {"message": f"Field '{m.group(1)}' doesn't exist on type '{m.group(2)}'",
               "extensions": {"code": "undefinedField", "typeName": m.group(2), "fieldName": m.group(1)}}
    elif m := _UNKNOWN_ARG.match(msg):
        out = {"message": f"Field '{m.group(3)}' doesn't accept argument '{m.group(1)}'",
               "extensions": {"code": "argumentNotAccepted", "name": m.group(3), "typeName": "Field",
                              "argumentName": m.group(1)}}
    elif m := _MISSING_ARG.match(msg):
        out = {"message": f"Field '{m.group(1)}' is missing required arguments: {m.group(2)}",
               "extensions": {"code": "missingRequiredArguments", "className": "Field", "name": m.group(1),
                              "arguments": m.group(2)}}
    else:
        out = {"message": msg, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}
    if err.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
    return out


def prepare(text: str) -> Prepared:
    with _CACHE_LOCK:
        p = _CACHE.get(text)
        if p is not None:
            _CACHE.move_to_end(text)
            return p
    try:
        doc = parse(text)
    except GraphQLError as err:
        e: dict[str, Any] = {"message": err.message, "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}
        if err.locations:
            e["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
        p = Prepared(text, [e])
    else:
        errors = validate(schema(), doc)
        p = Prepared(text, [_format_validation(e) for e in errors])
        for d in doc.definitions:
            if isinstance(d, OperationDefinitionNode):
                p.operations[d.name.value if d.name else None] = d
            elif isinstance(d, FragmentDefinitionNode):
                p.fragments[d.name.value] = d
        p.has_directives = "@" in text
        p.needs_io = "create_webhook" in text
    with _CACHE_LOCK:
        _CACHE[text] = p
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return p


def root_fields(prepared: Prepared, op: OperationDefinitionNode) -> list[FieldNode]:
    """The root fields of an operation (fragments at the root included)."""
    out: list[FieldNode] = []

    def walk(ss: Any) -> None:
        for sel in ss.selections:
            if isinstance(sel, FieldNode):
                out.append(sel)
            elif isinstance(sel, InlineFragmentNode):
                walk(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode):
                frag = prepared.fragments.get(sel.name.value)
                if frag is not None:
                    walk(frag.selection_set)

    walk(op.selection_set)
    return out


def _unwrap(t: Any) -> tuple[Any, bool]:
    is_list = False
    while isinstance(t, (GraphQLNonNull, GraphQLList)):
        if isinstance(t, GraphQLList):
            is_list = True
        t = t.of_type
    return t, is_list


def complexity(prepared: Prepared, op: OperationDefinitionNode, variables: dict[str, Any]) -> int:
    """The query's complexity under this module's model (see the module docstring)."""
    sch = schema()
    root = sch.mutation_type if op.operation == OperationType.MUTATION else sch.query_type
    total = 0

    def walk(parent: Any, ss: Any, mult: int, depth: int) -> int:
        cost = 0
        for sel in ss.selections:
            if isinstance(sel, FieldNode):
                name = sel.name.value
                fdef = parent.fields.get(name) if hasattr(parent, "fields") else None
                if fdef is None:
                    cost += mult
                    continue
                cost += mult
                if depth == 0 and root is sch.mutation_type:
                    cost += MUTATION_COST.get(name, DEFAULT_MUTATION_COST)
                if sel.selection_set is None:
                    continue
                inner, is_list = _unwrap(fdef.type)
                size = 1
                if is_list or name in ("items_page", "next_items_page", "items_page_by_column_values"):
                    try:
                        args = get_argument_values(fdef, sel, variables) if sel.arguments else {}
                    except GraphQLError:
                        args = {}
                    if args.get("limit"):
                        size = int(args["limit"])
                    elif args.get("ids"):
                        size = len(args["ids"])
                    elif is_list and getattr(parent, "name", "") != "ItemsResponse":   # the page's own list
                        size = DEFAULT_PAGE.get(name, OTHER_LIST)
                cost += walk(inner, sel.selection_set, mult * max(size, 1), depth + 1)
            elif isinstance(sel, InlineFragmentNode):
                cond = sch.type_map.get(sel.type_condition.name.value) if sel.type_condition else parent
                if isinstance(cond, GraphQLObjectType) or hasattr(cond, "fields"):
                    cost += walk(cond, sel.selection_set, mult, depth)
            elif isinstance(sel, FragmentSpreadNode):
                frag = prepared.fragments.get(sel.name.value)
                if frag is not None:
                    cond = sch.type_map.get(frag.type_condition.name.value)
                    cost += walk(cond, frag.selection_set, mult, depth)
        return cost

    total = walk(root, op.selection_set, 1, 0)
    return total
