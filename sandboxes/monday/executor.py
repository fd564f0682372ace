"""A small GraphQL executor over a validated document (faster than graphql-core's ``execute`` for this use: field
plans are collected once per selection set and runtime type and cached on the prepared document).

Resolution: a field ``f`` of an object ``obj`` is ``obj.gql_f(args, ctx)`` when the class defines it, else the
attribute ``obj.f`` (missing -> null). Interfaces resolve to ``obj.TYPENAME``. Leaves are serialized by scalar
name (ID -> str, Int -> int ...; JSON passes through, already in monday's form). Fields the sandbox does not
emulate read as null (non-null is not enforced on them). A resolver raising ``MondayError`` nulls its field and
adds an ``errors[]`` entry with the path and location (partial data, as monday answers); ``HttpFailure``
propagates and ends the request.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    InlineFragmentNode,
)
from graphql.execution.values import get_argument_values, get_directive_values
from graphql.type import GraphQLIncludeDirective, GraphQLSkipDirective

from sandboxes.monday.errors import MondayError
from sandboxes.monday.schema import Prepared, schema

_MISSING = object()
_ACCESSORS: dict[tuple[type, str], Any] = {}


def _accessor(cls: type, name: str) -> Any:
    key = (cls, name)
    acc = _ACCESSORS.get(key)
    if acc is None:
        method = getattr(cls, "gql_" + name, None)
        if method is not None:
            acc = ("m", method)
        elif issubclass(cls, dict):
            acc = ("d", name)
        else:
            acc = ("a", name)
        _ACCESSORS[key] = acc
    return acc


def _int(v: Any) -> Any:
    return int(v)


def _float(v: Any) -> Any:
    return float(v)


def _str(v: Any) -> Any:
    return str(v)


def _bool(v: Any) -> Any:
    return bool(v)


def _same(v: Any) -> Any:
    return v


SERIALIZERS = {"ID": _str, "Int": _int, "Float": _float, "String": _str, "Boolean": _bool}


class Context:
    """Per request: the sandbox view, variables, collected errors."""

    def __init__(self, prepared: Prepared, variables: dict[str, Any], state: Any) -> None:
        self.prepared = prepared
        self.variables = variables
        self.state = state                  # the request's sandbox handle (views.Request)
        self.errors: list[dict[str, Any]] = []
        self._args: dict[int, dict[str, Any]] = {}

    def args(self, fdef: Any, node: FieldNode) -> dict[str, Any]:
        if not node.arguments:
            return {}
        key = id(node)
        a = self._args.get(key)
        if a is None:
            a = self._args[key] = get_argument_values(fdef, node, self.variables)
        return a


class Plan:
    __slots__ = ("fdef", "key", "name", "nodes", "rtype")

    def __init__(self, key: str, name: str, nodes: list[FieldNode], fdef: Any) -> None:
        self.key = key
        self.name = name
        self.nodes = nodes
        self.fdef = fdef
        self.rtype = fdef.type if fdef is not None else None


def _included(node: Any, variables: dict[str, Any]) -> bool:
    if not node.directives:
        return True
    skip = get_directive_values(GraphQLSkipDirective, node, variables)
    if skip and skip.get("if") is True:
        return False
    inc = get_directive_values(GraphQLIncludeDirective, node, variables)
    return not (inc and inc.get("if") is False)


def collect(ctx: Context, otype: GraphQLObjectType, selection_sets: tuple[Any, ...]) -> list[Plan]:
    prepared = ctx.prepared
    cacheable = not prepared.has_directives
    key = (tuple(id(s) for s in selection_sets), otype.name)
    if cacheable:
        plans = prepared.collect_cache.get(key)
        if plans is not None:
            return plans
    sch = schema()
    fields: dict[str, list[FieldNode]] = {}

    def walk(ss: Any) -> None:
        for sel in ss.selections:
            if not _included(sel, ctx.variables):
                continue
            if isinstance(sel, FieldNode):
                rk = sel.alias.value if sel.alias else sel.name.value
                fields.setdefault(rk, []).append(sel)
            elif isinstance(sel, InlineFragmentNode):
                if sel.type_condition is None or _applies(sch, sel.type_condition.name.value, otype):
                    walk(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode):
                frag = prepared.fragments.get(sel.name.value)
                if frag is not None and _applies(sch, frag.type_condition.name.value, otype):
                    walk(frag.selection_set)

    for ss in selection_sets:
        walk(ss)
    plans = [Plan(rk, nodes[0].name.value, nodes, otype.fields.get(nodes[0].name.value))
             for rk, nodes in fields.items()]
    if cacheable:
        prepared.collect_cache[key] = plans
    return plans


def _applies(sch: Any, cond: str, otype: GraphQLObjectType) -> bool:
    if cond == otype.name:
        return True
    t = sch.type_map.get(cond)
    return t is not None and not isinstance(t, GraphQLObjectType) and sch.is_sub_type(t, otype)


def execute_selection(ctx: Context, otype: GraphQLObjectType, obj: Any, selection_sets: tuple[Any, ...],
                      path: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cls = type(obj)
    for plan in collect(ctx, otype, selection_sets):
        name = plan.name
        if name == "__typename":
            out[plan.key] = otype.name
            continue
        if plan.fdef is None:
            out[plan.key] = None
            continue
        node = plan.nodes[0]
        kind, what = _accessor(cls, name)
        try:
            if kind == "m":
                value = what(obj, ctx.args(plan.fdef, node), ctx)
            elif kind == "d":
                value = obj.get(what)
            else:
                value = getattr(obj, what, None)
        except MondayError as err:
            ctx.errors.append(_error(err, node, (*path, plan.key)))
            out[plan.key] = None
            continue
        except GraphQLError as err:   # argument coercion
            ctx.errors.append({"message": err.message, "locations": _locations(node), "path": [*path, plan.key],
                               "extensions": {"code": "argumentLiteralsIncompatible"}})
            out[plan.key] = None
            continue
        out[plan.key] = complete(ctx, plan.rtype, value, plan, (*path, plan.key))
    return out


def complete(ctx: Context, rtype: Any, value: Any, plan: Plan, path: tuple[Any, ...]) -> Any:
    if isinstance(rtype, GraphQLNonNull):
        rtype = rtype.of_type
    if value is None:
        return None
    if isinstance(rtype, GraphQLList):
        inner = rtype.of_type
        return [complete(ctx, inner, v, plan, (*path, i)) for i, v in enumerate(value)]
    if isinstance(rtype, GraphQLScalarType):
        return SERIALIZERS.get(rtype.name, _same)(value)
    if isinstance(rtype, GraphQLEnumType):
        return str(value)
    if not isinstance(rtype, GraphQLObjectType):
        rtype = schema().type_map[value.TYPENAME]
    return execute_selection(ctx, rtype, value, tuple(n.selection_set for n in plan.nodes if n.selection_set),
                             path)


def _locations(node: Any) -> list[dict[str, int]]:
    locs = GraphQLError("", node).locations or []
    return [{"line": loc.line, "column": loc.column} for loc in locs]


def _error(err: MondayError, node: Any, path: tuple[Any, ...]) -> dict[str, Any]:
    return {"message": err.message, "locations": _locations(node), "path": list(path),
            "extensions": err.extensions()}
