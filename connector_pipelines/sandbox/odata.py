"""What the OData sandboxes (Business Central, Finance & Operations) share: the error type, date-time
parsing, the `$filter` tokenizer and the boolean grammar of a filter (or > and > not > comparison |
( expr )). Each sandbox supplies its own comparison rules, error codes and wording.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
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


class ODataError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(f"{status} {code}: {message}")


def parse_dt(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # OData allows 7 fractional digits; Python takes 6
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def tokenize(text: str, error_code: str = "BadRequest") -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ODataError(400, error_code, f"Syntax error at position {pos} in '{text}'.")
        pos = m.end()
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "str":
            tokens.append(("lit", raw[1:-1].replace("''", "'")))
        elif kind == "dt":
            tokens.append(("lit", parse_dt(raw)))
        elif kind == "date":
            tokens.append(("lit", date.fromisoformat(raw)))
        elif kind == "guid":
            tokens.append(("lit", uuid.UUID(raw)))
        elif kind == "num":
            tokens.append(("lit", float(raw)))
        elif kind == "word":
            low = raw.lower()
            if low in ("true", "false"):
                tokens.append(("lit", low == "true"))
            elif low == "null":
                tokens.append(("lit", None))
            elif low in COMPARE or low in ("and", "or", "not"):
                tokens.append(("op", low))
            else:
                tokens.append(("prop", raw))
        else:
            tokens.append((kind, raw))
    return tokens


Predicate = Callable[[dict[str, Any]], bool]


class FilterGrammar:
    """Recursive descent over tokens: or > and > not > comparison | ( expr ), returning a predicate on
    records. A subclass implements `_comparison` (the vendor's typing rules) and may set `error_code`
    and `noun` (how its error messages name the option)."""

    error_code = "BadRequest"
    noun = "filter"

    def __init__(self, text: str, tokens: list[tuple[str, Any]]) -> None:
        self.text, self.tokens, self.i = text, tokens, 0

    def error(self, message: str) -> ODataError:
        return ODataError(400, self.error_code, message)

    def parse(self) -> Predicate:
        pred = self._or()
        if self.i != len(self.tokens):
            raise self.error(f"Syntax error in {self.noun} '{self.text}'.")
        return pred

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self) -> tuple[str, Any]:
        tok = self._peek()
        if tok is None:
            raise self.error(f"Unexpected end of {self.noun} '{self.text}'.")
        self.i += 1
        return tok

    def _or(self) -> Predicate:
        left = self._and()
        while self._peek() == ("op", "or"):
            self.i += 1
            right, prev = self._and(), left
            left = lambda r, a=prev, b=right: a(r) or b(r)
        return left

    def _and(self) -> Predicate:
        left = self._unary()
        while self._peek() == ("op", "and"):
            self.i += 1
            right, prev = self._unary(), left
            left = lambda r, a=prev, b=right: a(r) and b(r)
        return left

    def _unary(self) -> Predicate:
        if self._peek() == ("op", "not"):
            self.i += 1
            inner = self._unary()
            return lambda r: not inner(r)
        if self._peek() == ("lp", "("):
            self.i += 1
            inner = self._or()
            if self._take() != ("rp", ")"):
                raise self.error(f"Missing ')' in {self.noun} '{self.text}'.")
            return inner
        return self._comparison()

    def _operator(self) -> str:
        kind, op = self._take()
        if kind != "op" or op not in COMPARE:
            raise self.error(f"Syntax error in {self.noun} '{self.text}'.")
        return op

    def _comparison(self) -> Predicate:
        raise NotImplementedError
