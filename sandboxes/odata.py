"""What the OData sandboxes (Business Central, Finance & Operations) share: the error type, date-time
parsing, response headers, the `$filter` tokenizer (each literal with its EDM type), the operand-type
check of a comparison, and the boolean grammar of a filter (or > and > not > comparison | ( expr )).
Each sandbox supplies its own comparison rules, error codes and wording.

Both vendors parse URIs with Microsoft's OData library (Microsoft.OData.Core, "ODL"), so the error texts
use that library's message families (its resource strings, GitHub OData/odata.net
``src/Microsoft.OData.Core/Microsoft.OData.Core.txt``):
  ExpressionLexer_SyntaxError                       "Syntax error at position {0} in '{1}'."
  ExpressionLexer_InvalidCharacter                  "Syntax error: character '{0}' is not valid at position {1} in '{2}'."
  ExpressionLexer_UnterminatedStringLiteral         "There is an unterminated string literal at position {0} in '{1}'."
  UriQueryExpressionParser_ExpressionExpected       "Expression expected at position {0} in '{1}'."
  UriQueryExpressionParser_CloseParenOrOperatorExpected  "')' or operator expected at position {0} in '{1}'."
  MetadataBinder_IncompatibleOperandsError          "A binary operator with incompatible types was detected. Found
                                                     operand types '{0}' and '{1}' for operator kind '{2}'."
  MetadataBinder_PropertyNotDeclared                "Could not find a property named '{1}' on type '{0}'."
  MetadataBinder_FilterExpressionNotSingleValue     "The $filter expression must evaluate to a single boolean value."
UNCONFIRMED: the exact position numbers and which family a given malformed filter gets at BC / F&O (they wrap
the library's message in their own envelope); the families follow the library's lexer and parser.

Operand types follow the library's type promotion (TypePromotionUtils / MetadataUtilsCommon.CanConvertPrimitiveTypeTo):
numbers promote among each other; every other primitive type compares only with itself (a quoted
'2019-08-18T20:05:51Z' is Edm.String, not Edm.DateTimeOffset; a date-only literal is Edm.Date); null compares
with anything.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

GUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
DT_RE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})"
TOKEN_RE = re.compile(
    rf"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<str>'(?:[^']|'')*')|(?P<dt>{DT_RE})|(?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?![\w:])"
    rf"|(?P<guid>{GUID_RE})|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w-])|(?P<word>[A-Za-z_][\w.]*))")
COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}
# the library's BinaryOperatorKind names, as its messages print them
OPERATOR_KIND = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
                 "lt": "LessThan", "le": "LessThanOrEqual"}
NUMERIC = {"Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Single", "Edm.Double", "Edm.Decimal"}
ODATA_VERSION = "4.0"


class ODataError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(f"{status} {code}: {message}")


def odata_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``OData-Version: 4.0`` plus ``headers`` (every OData v4 response carries the version it speaks)."""
    return {"OData-Version": ODATA_VERSION, **(headers or {})}


def parse_dt(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # OData allows 7 fractional digits; Python takes 6
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Token:
    """One lexeme of a filter: ``kind`` is lp, rp, lit, op, prop (or a vendor's own kind); ``edm`` is the EDM
    type of a literal (None for null); ``pos``/``end`` are its offsets in the filter text."""

    kind: str
    value: Any
    pos: int
    end: int
    edm: str | None = None

    def is_(self, kind: str, value: Any = None) -> bool:
        return self.kind == kind and (value is None or self.value == value)


def _number(raw: str) -> tuple[float, str]:
    if re.search(r"[eE]", raw):
        return float(raw), "Edm.Double"
    if "." in raw:
        return float(raw), "Edm.Decimal"
    n = int(raw)
    return float(n), "Edm.Int32" if -2**31 <= n < 2**31 else "Edm.Int64"


def syntax_error(text: str, pos: int, code: str = "BadRequest") -> ODataError:
    return ODataError(400, code, f"Syntax error at position {pos} in '{text}'.")


def tokenize(text: str, error_code: str = "BadRequest") -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            at = pos + len(text[pos:]) - len(text[pos:].lstrip())
            if text[at] == "'":
                raise ODataError(400, error_code, f"There is an unterminated string literal at position {at} in '{text}'.")
            if text[at].isalnum():
                raise syntax_error(text, at, error_code)
            raise ODataError(400, error_code,
                             f"Syntax error: character '{text[at]}' is not valid at position {at} in '{text}'.")
        kind = m.lastgroup
        raw = m.group(kind)
        start, pos = m.start(kind), m.end()
        if kind == "str":
            tokens.append(Token("lit", raw[1:-1].replace("''", "'"), start, pos, "Edm.String"))
        elif kind == "dt":
            tokens.append(Token("lit", parse_dt(raw), start, pos, "Edm.DateTimeOffset"))
        elif kind == "date":
            tokens.append(Token("lit", date.fromisoformat(raw), start, pos, "Edm.Date"))
        elif kind == "guid":
            tokens.append(Token("lit", uuid.UUID(raw), start, pos, "Edm.Guid"))
        elif kind == "num":
            value, edm = _number(raw)
            tokens.append(Token("lit", value, start, pos, edm))
        elif kind == "word":
            low = raw.lower()
            if low in ("true", "false"):
                tokens.append(Token("lit", low == "true", start, pos, "Edm.Boolean"))
            elif low == "null":
                tokens.append(Token("lit", None, start, pos, None))
            elif low in COMPARE or low in ("and", "or", "not"):
                tokens.append(Token("op", low, start, pos))
            else:
                tokens.append(Token("prop", raw, start, pos))
        else:
            tokens.append(Token(kind, raw, start, pos))
    return tokens


def comparable(left: str | None, right: str | None) -> bool:
    """Whether two primitive EDM types may meet in eq/ne/gt/ge/lt/le (None = the null literal)."""
    if left is None or right is None or left == right:
        return True
    return left in NUMERIC and right in NUMERIC


def incompatible(left: str | None, right: str | None, op: str, code: str = "BadRequest") -> ODataError:
    """The library's MetadataBinder_IncompatibleOperandsError, operands in the order they were written."""
    return ODataError(400, code, "A binary operator with incompatible types was detected. Found operand types "
                                 f"'{left or '<null>'}' and '{right or '<null>'}' for operator kind "
                                 f"'{OPERATOR_KIND[op]}'.")


Predicate = Callable[[dict[str, Any]], bool]


def equality_hint(pred: Predicate) -> dict[str, frozenset[str]]:
    """What a predicate implies about string properties: ``{prop: values}`` means "true only if the record's
    ``prop``, lower-cased, is one of ``values``". An emulator may use it to pick candidate rows by key before it
    runs the full predicate on them (same answers as a scan, without evaluating every row)."""
    return getattr(pred, "equality_hint", None) or {}


def with_hint(pred: Predicate, hint: dict[str, frozenset[str]]) -> Predicate:
    if hint:
        pred.equality_hint = hint   # type: ignore[attr-defined]
    return pred


def matches_hint(hint: dict[str, frozenset[str]], record: dict[str, Any]) -> bool:
    for prop, values in hint.items():
        v = record.get(prop)
        if not isinstance(v, str) or v.lower() not in values:
            return False
    return True


class FilterGrammar:
    """Recursive descent over tokens: or > and > not > comparison | ( expr ), returning a predicate on
    records. A subclass implements `_comparison` (the vendor's typing rules) and may set `error_code`."""

    error_code = "BadRequest"

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text, self.tokens, self.i, self.depth = text, tokens, 0, 0

    def error(self, message: str) -> ODataError:
        return ODataError(400, self.error_code, message)

    def parse(self) -> Predicate:
        if not self.tokens:
            raise self._expression_expected()
        pred = self._or()
        if self.i != len(self.tokens):
            raise syntax_error(self.text, self.tokens[self.i].end, self.error_code)
        return pred

    def _peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next_is(self, kind: str, value: Any = None) -> bool:
        tok = self._peek()
        return tok is not None and tok.is_(kind, value)

    def _expression_expected(self) -> ODataError:
        tok = self._peek()
        pos = tok.pos if tok is not None else len(self.text)
        return self.error(f"Expression expected at position {pos} in '{self.text}'.")

    def _take_operand(self) -> Token:
        tok = self._peek()
        if tok is None or tok.kind in ("op", "rp"):
            raise self._expression_expected()
        self.i += 1
        return tok

    def _or(self) -> Predicate:
        left = self._and()
        while self._next_is("op", "or"):
            self.i += 1
            right, prev = self._and(), left
            ha, hb = equality_hint(prev), equality_hint(right)
            left = with_hint(lambda r, a=prev, b=right: a(r) or b(r),
                             {p: ha[p] | hb[p] for p in ha.keys() & hb.keys()})
        return left

    def _and(self) -> Predicate:
        left = self._unary()
        while self._next_is("op", "and"):
            self.i += 1
            right, prev = self._unary(), left
            ha, hb = equality_hint(prev), equality_hint(right)
            left = with_hint(lambda r, a=prev, b=right: a(r) and b(r),
                             {**ha, **hb, **{p: ha[p] & hb[p] for p in ha.keys() & hb.keys()}})
        return left

    def _unary(self) -> Predicate:
        if self._next_is("op", "not"):
            self.i += 1
            inner = self._unary()
            return lambda r: not inner(r)
        if self._next_is("lp"):
            self.i += 1
            self.depth += 1
            inner = self._or()
            tok = self._peek()
            if tok is None or not tok.is_("rp"):
                pos = tok.pos if tok is not None else len(self.text)
                raise self.error(f"')' or operator expected at position {pos} in '{self.text}'.")
            self.i += 1
            self.depth -= 1
            return inner
        return self._comparison()

    def _operator(self) -> str:
        tok = self._peek()
        if tok is None:
            # a bare operand is not a boolean expression
            raise self.error("The $filter expression must evaluate to a single boolean value.")
        if tok.kind != "op" or tok.value not in COMPARE:
            if self.depth:
                raise self.error(f"')' or operator expected at position {tok.pos} in '{self.text}'.")
            raise syntax_error(self.text, tok.end, self.error_code)
        self.i += 1
        return tok.value

    def _comparison(self) -> Predicate:
        raise NotImplementedError
