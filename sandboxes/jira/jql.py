"""JQL as a language: tokenizer, recursive-descent parser (``parse_jql`` -> ``JqlQuery``) and the ``~``
text match. Pure functions, no site: evaluating a query against a site's issues is jql_eval.py."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sandboxes.jira.errors import JqlError


@dataclass(frozen=True)
class Tok:
    kind: str     # WORD, STRING, OP, LPAREN, RPAREN, COMMA, EOF
    text: str
    pos: int


_JQL_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc"}
_WORD_RE = re.compile(r"cf\[\d+\]|[A-Za-z0-9_.\-@:*/+]+(?:\(\s*\))?", re.IGNORECASE)
_PLAIN_RUN = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}


def tokenize_jql(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "\"'":
            quote, j, buf = c, i + 1, []
            plain = _PLAIN_RUN[quote]
            while j < n and text[j] != quote:
                run = plain.match(text, j)   # up to the next quote or backslash at once, not a character at a time
                if run:
                    buf.append(run.group())
                    j = run.end()
                    continue
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt) if nxt in "ntr\"'\\ " else "\\" + nxt)
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                raise JqlError(f"Error in the JQL Query: The quoted string '{text[i:]}' has not been completed. "
                               f"(line 1, character {i + 1})")
            toks.append(Tok("STRING", "".join(buf), i))
            i = j + 1
            continue
        two = text[i:i + 2]
        if two in ("!=", "!~", ">=", "<=", "&&", "||"):
            kind = "WORD" if two in ("&&", "||") else "OP"
            toks.append(Tok(kind, {"&&": "and", "||": "or"}.get(two, two), i))
            i += 2
            continue
        if c in "=~<>":
            toks.append(Tok("OP", c, i))
            i += 1
            continue
        if c == "!":
            toks.append(Tok("WORD", "not", i))
            i += 1
            continue
        if c == "(":
            toks.append(Tok("LPAREN", c, i))
            i += 1
            continue
        if c == ")":
            toks.append(Tok("RPAREN", c, i))
            i += 1
            continue
        if c == ",":
            toks.append(Tok("COMMA", c, i))
            i += 1
            continue
        m = _WORD_RE.match(text, i)
        if not m:
            raise JqlError(f"Error in the JQL Query: The character '{c}' is a reserved JQL character. You must "
                           f"enclose it in a string or use the escape '\\u{ord(c):04x}' instead. "
                           f"(line 1, character {i + 1})")
        toks.append(Tok("WORD", m.group(0), i))
        i = m.end()
    toks.append(Tok("EOF", "", n))
    return toks


@dataclass
class Clause:
    field: str
    op: str                     # =, !=, ~, !~, <, >, <=, >=, in, not in, is, is not
    values: list[str | None]    # None is EMPTY / NULL
    quoted_field: bool = False


@dataclass
class BoolOp:
    op: str                     # and / or
    parts: list[Any]


@dataclass
class NotOp:
    part: Any


@dataclass
class JqlQuery:
    where: Any | None
    order_by: list[tuple[str, str]]


class JqlParser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize_jql(text)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_kw(self, word: str, tok: Tok | None = None) -> bool:
        tok = tok or self.peek()
        return tok.kind == "WORD" and tok.text.lower() == word

    def error(self, expected: str) -> JqlError:
        t = self.peek()
        got = "the end of the query" if t.kind == "EOF" else f"'{t.text}'"
        return JqlError(f"Error in the JQL Query: Expecting {expected} but got {got}. "
                        f"(line 1, character {t.pos + 1})")

    def parse(self) -> JqlQuery:
        where = None
        if not (self.is_kw("order") or self.peek().kind == "EOF"):
            where = self.parse_or()
        order: list[tuple[str, str]] = []
        if self.is_kw("order"):
            self.next()
            if not self.is_kw("by"):
                raise self.error("'by'")
            self.next()
            while True:
                t = self.next()
                if t.kind not in ("WORD", "STRING") or (t.kind == "WORD" and t.text.lower() in _JQL_KEYWORDS):
                    self.i -= 1
                    raise self.error("a field name")
                direction = "asc"
                if self.is_kw("asc") or self.is_kw("desc"):
                    direction = self.next().text.lower()
                order.append((t.text, direction))
                if self.peek().kind == "COMMA":
                    self.next()
                    continue
                break
        if self.peek().kind != "EOF":
            raise self.error("either 'OR' or 'AND'" if where is not None else "a field name")
        return JqlQuery(where, order)

    def parse_or(self) -> Any:
        parts = [self.parse_and()]
        while self.is_kw("or"):
            self.next()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("or", parts)

    def parse_and(self) -> Any:
        parts = [self.parse_not()]
        while self.is_kw("and"):
            self.next()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else BoolOp("and", parts)

    def parse_not(self) -> Any:
        if self.is_kw("not"):
            self.next()
            return NotOp(self.parse_not())
        if self.peek().kind == "LPAREN":
            self.next()
            inner = self.parse_or()
            if self.peek().kind != "RPAREN":
                raise self.error("')'")
            self.next()
            return inner
        return self.parse_clause()

    def parse_value(self) -> str | None:
        t = self.next()
        if t.kind == "STRING":
            return t.text
        if t.kind == "WORD" and t.text.lower() in ("empty", "null"):
            return None
        if t.kind == "WORD" and t.text.lower() not in _JQL_KEYWORDS:
            return t.text
        self.i -= 1
        raise self.error("either a value, list or function")

    def parse_clause(self) -> Clause:
        t = self.next()
        if t.kind not in ("WORD", "STRING") or (t.kind == "WORD" and t.text.lower() in _JQL_KEYWORDS):
            self.i -= 1
            raise self.error("a field name")
        fname, quoted = t.text, t.kind == "STRING"
        op_tok = self.peek()
        if op_tok.kind == "OP":
            self.next()
            return Clause(fname, op_tok.text, [self.parse_value()], quoted)
        if self.is_kw("in") or (self.is_kw("not") and self.is_kw("in", self.toks[self.i + 1])):
            op = "in"
            if self.is_kw("not"):
                self.next()
                op = "not in"
            self.next()
            if self.peek().kind != "LPAREN":
                raise self.error("'('")
            self.next()
            values = [self.parse_value()]
            while self.peek().kind == "COMMA":
                self.next()
                values.append(self.parse_value())
            if self.peek().kind != "RPAREN":
                raise self.error("')'")
            self.next()
            return Clause(fname, op, values, quoted)
        if self.is_kw("is"):
            self.next()
            op = "is"
            if self.is_kw("not"):
                self.next()
                op = "is not"
            v = self.next()
            if not (v.kind == "WORD" and v.text.lower() in ("empty", "null")):
                self.i -= 1
                raise self.error("'EMPTY' or 'NULL'")
            return Clause(fname, op, [None], quoted)
        raise self.error("operator")


def parse_jql(text: str) -> JqlQuery:
    return JqlParser(text).parse()


def iter_clauses(node: Any) -> Iterable[Clause]:
    if isinstance(node, Clause):
        yield node
    elif isinstance(node, BoolOp):
        for p in node.parts:
            yield from iter_clauses(p)
    elif isinstance(node, NotOp):
        yield from iter_clauses(node.part)


def text_tokens(text: str) -> list[str]:
    """Jira-like text-field tokens: alphanumeric runs, lower case."""
    return re.findall(r"[a-z0-9]+", text.lower())


@functools.lru_cache(maxsize=200_000)
def _field_tokens(field_text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    tokens = tuple(text_tokens(field_text))
    return tokens, frozenset(tokens)


@functools.lru_cache(maxsize=20_000)
def _text_query(query: str) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[tuple[str, ...], bool], ...]]:
    """A ``~`` query parsed once: its phrases' tokens, and its terms' tokens with the prefix flag."""
    q = query.strip()
    phrases = tuple(tuple(text_tokens(re.sub(r"\\(.)", r"\1", ph)))
                    for ph in re.findall(r'"((?:\\.|[^"\\])*)"', q))
    rest = re.sub(r'"((?:\\.|[^"\\])*)"', " ", q)
    terms = tuple((tuple(text_tokens(re.sub(r"\\(.)", r"\1", term))), term.endswith("*"))
                  for term in rest.split() if term.upper() not in ("AND", "OR"))
    return phrases, terms


def text_matches(field_text: str, query: str) -> bool:
    """``field ~ query``: every query term's tokens appear among the field's tokens (a token match, not a
    substring match, so it can over-match: "BC-1" matches "BC-1-A"). A quoted phrase needs its tokens
    consecutive; a trailing ``*`` makes a prefix term. (Tokens and parsed queries are cached: the
    sandbox evaluates one clause against every issue of a site.)"""
    hay, hay_set = _field_tokens(field_text)
    phrases, terms = _text_query(query)
    for toks in phrases:
        if not toks:
            continue
        if not all(t in hay_set for t in toks):
            return False
        n = len(toks)
        if not any(hay[i:i + n] == toks for i in range(len(hay) - n + 1)):
            return False
    for toks, prefix in terms:
        for k, tok in enumerate(toks):
            if prefix and k == len(toks) - 1:
                if not any(h.startswith(tok) for h in hay):
                    return False
            elif tok not in hay_set:
                return False
    return True
