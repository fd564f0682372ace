"""``$filter`` of Acumatica's contract-based REST API (OData URI conventions, version 3 style).

Grammar: ``or`` < ``and`` < ``not`` < comparison | function call | ``( expr )``. Comparisons ``eq ne gt ge lt
le`` between a field (``Field``, or ``Linked/Field`` of a linked entity such as ``MainContact/Email``) and a
literal: ``'text'`` (``''`` escapes a quote), numbers, ``true``/``false``, ``null``, ``datetimeoffset'…'`` /
``datetime'…'`` (the query string is URL-decoded first, so ``%3A``/``%2B`` arrive decoded), ``guid'…'``.
Functions: ``substringof('x', Field)``, ``startswith(Field, 'x')``, ``endswith(Field, 'x')``, each usable as a
boolean or compared with ``true``/``false``.

Errors (raised as ``AcumaticaError`` 500, the only error status the spec documents for GET lists):
- a field of a **detail** entity (``Details/Amount``): Acumatica's docs say filtering on detail records "is not
  supported" and its result "cannot be predicted"; the sandbox refuses it. UNCONFIRMED: the status and wording.
- a literal whose type does not fit the field (a plain string against a date-time field, a number against a
  string): the OData library's "A binary operator with incompatible types was detected..." message.
  UNCONFIRMED: the status (500) and that Acumatica passes the library's message through unchanged.
- unknown fields and syntax errors: 500 with a message naming the position. UNCONFIRMED: wording.
String comparisons are case-insensitive, as SQL Server's default collation compares them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sandboxes.acumatica.model import EDM_NAMES, AcumaticaError, parse_datetime, shape

TOKEN_RE = re.compile(r"""\s*(?:
    (?P<lp>\() | (?P<rp>\)) | (?P<comma>,)
  | (?P<typed>(?:datetimeoffset|datetime|guid|time)'(?:[^']|'')*')
  | (?P<str>'(?:[^']|'')*')
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDfFlL]?)(?![\w])
  | (?P<word>[A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*)
)""", re.VERBOSE)
COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}
KIND = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual", "lt": "LessThan",
        "le": "LessThanOrEqual"}
FUNCS = {"substringof", "startswith", "endswith"}
Pred = Callable[[dict[str, Any]], bool]


def _error(message: str) -> AcumaticaError:
    return AcumaticaError(500, "An error has occurred.", message, "System.Exception")


class Tok:
    __slots__ = ("kind", "pos", "typ", "value")

    def __init__(self, kind: str, value: Any, typ: str | None, pos: int):
        self.kind, self.value, self.typ, self.pos = kind, value, typ, pos


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise _error(f"Syntax error: character '{text[pos:].lstrip()[:1]}' is not valid at position {pos} "
                         f"in '{text}'.")
        start = m.start(m.lastgroup)
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "str":
            out.append(Tok("lit", raw[1:-1].replace("''", "'"), "string", start))
        elif kind == "typed":
            prefix, _, rest = raw.partition("'")
            inner = rest[:-1].replace("''", "'")
            if prefix in ("datetimeoffset", "datetime"):
                try:
                    out.append(Tok("lit", parse_datetime(inner), "datetime", start))
                except ValueError:
                    raise _error(f"Unrecognized '{EDM_NAMES['datetime']}' literal '{raw}' at '{start}' in "
                                 f"'{text}'.") from None
            elif prefix == "guid":
                out.append(Tok("lit", inner.lower(), "guid", start))
            else:
                out.append(Tok("lit", inner, "string", start))
        elif kind == "num":
            num = raw.rstrip("mMdDfFlL")
            out.append(Tok("lit", float(num) if re.search(r"[.eE]", num) else int(num), "number", start))
        elif kind == "word":
            low = raw.lower()
            if low in ("true", "false"):
                out.append(Tok("lit", low == "true", "bool", start))
            elif low == "null":
                out.append(Tok("lit", None, None, start))
            elif low in COMPARE or low in ("and", "or", "not"):
                out.append(Tok("op", low, None, start))
            else:
                out.append(Tok("name", raw, None, start))
        else:
            out.append(Tok(kind, raw, None, start))
        pos = m.end()
    return out


class FilterParser:
    def __init__(self, text: str, schema_name: str):
        self.text = text
        self.schema = schema_name
        self.toks = tokenize(text)
        self.i = 0

    # -- helpers ---------------------------------------------------------------------------------------
    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise _error(f"Expression expected at position {len(self.text)} in '{self.text}'.")
        self.i += 1
        return tok

    def expect(self, kind: str) -> Tok:
        tok = self.take()
        if tok.kind != kind:
            want = {"rp": "')'", "lp": "'('", "comma": "','"}.get(kind, kind)
            raise _error(f"{want} expected at position {tok.pos} in '{self.text}'.")
        return tok

    def parse(self) -> Pred:
        pred = self.or_expr()
        tok = self.peek()
        if tok is not None:
            raise _error(f"')' or operator expected at position {tok.pos} in '{self.text}'.")
        return pred

    # -- grammar ---------------------------------------------------------------------------------------
    def or_expr(self) -> Pred:
        left = self.and_expr()
        while (t := self.peek()) is not None and t.kind == "op" and t.value == "or":
            self.i += 1
            right = self.and_expr()
            left = _either(left, right)
        return left

    def and_expr(self) -> Pred:
        left = self.unary()
        while (t := self.peek()) is not None and t.kind == "op" and t.value == "and":
            self.i += 1
            right = self.unary()
            left = _both(left, right)
        return left

    def unary(self) -> Pred:
        t = self.peek()
        if t is not None and t.kind == "op" and t.value == "not":
            self.i += 1
            inner = self.unary()
            return lambda r: not inner(r)
        return self.comparison()

    def operand(self) -> tuple[str, Any, str | None, Callable[[dict[str, Any]], Any] | None]:
        """One side of a comparison: ("lit", value, type, None) or ("field", name, type, getter), or a function."""
        t = self.take()
        if t.kind == "lp":
            pred = self.or_expr()
            self.expect("rp")
            return ("bool", None, "bool", pred)
        if t.kind == "lit":
            return ("lit", t.value, t.typ, None)
        if t.kind == "name":
            nxt = self.peek()
            if t.value.lower() in FUNCS and nxt is not None and nxt.kind == "lp":
                return ("bool", None, "bool", self.function(t.value.lower()))
            typ, getter = self.field(t)
            return ("field", t.value, typ, getter)
        raise _error(f"Expression expected at position {t.pos} in '{self.text}'.")

    def field(self, tok: Tok) -> tuple[str, Callable[[dict[str, Any]], Any]]:
        parts = tok.value.split("/")
        schema = self.schema
        for depth, part in enumerate(parts):
            fs = shape(schema).get(part)
            if fs is None:
                raise _error(f"Could not find a property named '{part}' on type '{schema}'.")
            last = depth == len(parts) - 1
            if fs.kind == "detail":
                raise _error(f"Filtering by the fields of the detail entity '{part}' is not supported "
                             f"(position {tok.pos} in '{self.text}').")
            if last:
                if fs.kind != "value":
                    raise _error(f"The property '{part}' of type '{schema}' cannot be compared.")
                break
            if fs.kind != "linked":
                raise _error(f"The property '{part}' of type '{schema}' has no property '{parts[depth + 1]}'.")
            schema = fs.schema or ""
        typ = fs.type or "string"

        def get(rec: dict[str, Any]) -> Any:
            node: Any = rec
            for p in parts:
                if not isinstance(node, dict):
                    return None
                node = node.get(p)
            return node

        return typ, get

    def function(self, name: str) -> Pred:
        self.expect("lp")
        args = [self.operand()]
        self.expect("comma")
        args.append(self.operand())
        self.expect("rp")
        if name == "substringof":
            needle, hay = args
        else:
            hay, needle = args
        for a in (needle, hay):
            if a[2] not in ("string", None):
                raise _error(f"No function signature for the function with name '{name}' matches the specified "
                             f"arguments. The function signatures considered are: {name}(Edm.String Nullable=true, "
                             f"Edm.String Nullable=true).")
        nv, hv = _valuer(needle), _valuer(hay)
        test = {"substringof": lambda h, n: n in h, "startswith": str.startswith, "endswith": str.endswith}[name]

        def pred(rec: dict[str, Any]) -> bool:
            h, n = hv(rec), nv(rec)
            if h is None or n is None:
                return False
            return test(str(h).lower(), str(n).lower())

        return pred

    def comparison(self) -> Pred:
        left = self.operand()
        t = self.peek()
        if t is None or t.kind != "op" or t.value not in COMPARE:
            if left[0] == "bool":
                return left[3]  # type: ignore[return-value]
            if left[0] == "field" and left[2] == "bool":
                getter = left[3]
                return lambda r: bool(getter(r))  # type: ignore[misc]
            pos = t.pos if t is not None else len(self.text)
            raise _error(f"The $filter expression must evaluate to a single boolean value (position {pos} in "
                         f"'{self.text}').")
        self.i += 1
        op = t.value
        right = self.operand()
        lt, rt = left[2], right[2]
        if lt is not None and rt is not None and not _compatible(lt, rt):
            raise _error("A binary operator with incompatible types was detected. Found operand types "
                         f"'{_edm(lt)}' and '{_edm(rt)}' for operator kind '{KIND[op]}'.")
        lv, rv = _valuer(left), _valuer(right)
        text_cmp = "string" in (lt, rt)

        def pred(rec: dict[str, Any]) -> bool:
            a, b = lv(rec), rv(rec)
            if text_cmp:
                a = a.lower() if isinstance(a, str) else a
                b = b.lower() if isinstance(b, str) else b
            if op == "eq":
                return a == b
            if op == "ne":
                return a != b
            if a is None or b is None:
                return False
            try:
                return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
            except TypeError:
                return False

        return pred


def _either(a: Pred, b: Pred) -> Pred:
    return lambda r: a(r) or b(r)


def _both(a: Pred, b: Pred) -> Pred:
    return lambda r: a(r) and b(r)


def _edm(typ: str) -> str:
    return EDM_NAMES.get(typ, "Edm.Decimal" if typ == "number" else typ)


def _compatible(a: str, b: str) -> bool:
    numeric = {"number", "int"}
    if a in numeric and b in numeric:
        return True
    if {a, b} == {"guid", "string"}:
        return False
    return a == b


def _valuer(operand: tuple[str, Any, str | None, Any]) -> Callable[[dict[str, Any]], Any]:
    kind, value, typ, getter = operand
    if kind == "lit":
        return lambda rec: value
    if kind == "bool":
        return getter
    if typ == "guid":
        return lambda rec: (str(getter(rec)).lower() if getter(rec) is not None else None)
    return getter


@lru_cache(maxsize=256)
def compile_filter(text: str, schema_name: str) -> Pred:
    """The predicate of a ``$filter`` (compiled once per text and entity)."""
    return FilterParser(text, schema_name).parse()


__all__ = ["compile_filter", "tokenize"]
