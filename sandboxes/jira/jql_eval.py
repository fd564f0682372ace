"""JQL evaluated against a site: field names resolved to system or custom fields, a parsed query compiled
to a predicate over issues (per field kind: equality, text ``~``, ordered numbers and dates), and ORDER BY."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandboxes.jira.adf import adf_text
from sandboxes.jira.errors import JiraHttpError, JqlError
from sandboxes.jira.jql import BoolOp, Clause, JqlQuery, NotOp, text_matches
from sandboxes.jira.model import _RESOLUTIONS, STATUS_CATEGORIES, Issue, Site

_RELATIVE_RE = re.compile(r"^([-+]?)(\d+)([wdhm])$", re.IGNORECASE)
_SYSTEM_JQL_FIELDS = {
    "project": "project", "issuetype": "issuetype", "type": "issuetype", "status": "status",
    "statuscategory": "statusCategory", "key": "key", "issuekey": "key", "id": "key",
    "summary": "summary", "description": "description", "text": "text", "assignee": "assignee",
    "reporter": "reporter", "created": "created", "createddate": "created", "updated": "updated",
    "updateddate": "updated", "labels": "labels", "resolution": "resolution",
}


def _parse_jql_date(value: str, now: datetime) -> datetime:
    v = value.strip()
    m = _RELATIVE_RE.match(v)
    if m:
        sign = -1 if m.group(1) == "-" else 1
        unit = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}[m.group(3).lower()]
        return now + sign * timedelta(**{unit: int(m.group(2))})
    if v.isdigit():
        return datetime.fromtimestamp(int(v) / 1000, UTC)
    for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(v, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        dt = datetime.fromisoformat(v.replace("+0000", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    except ValueError:
        raise JqlError(f"Date value '{value}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', "
                       f"'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'.")


class JqlEvalMixin:
    """Compiles JQL against a site (``_compile_jql``) and orders issues; used by search, webhook filters and
    admin-webhook setup."""

    def _resolve_jql_field(self, site: Site, name: str) -> list[tuple[str, str]]:
        """[(kind, field id)]: kind is a system field name or a custom field kind."""
        low = name.lower()
        m = re.fullmatch(r"cf\[(\d+)\]", low)
        if m:
            fid = f"customfield_{m.group(1)}"
            if fid in site.custom_fields:
                return [(site.custom_fields[fid].kind, fid)]
        elif low in _SYSTEM_JQL_FIELDS:
            return [(_SYSTEM_JQL_FIELDS[low], _SYSTEM_JQL_FIELDS[low])]
        else:
            found = [(cf.kind, cf.id) for cf in site.custom_fields.values() if cf.name.lower() == low]
            if found:
                return found
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")

    def _compile_jql(self, site: Site, query: JqlQuery) -> Callable[[Issue], bool]:
        for name, _dir in query.order_by:
            self._resolve_jql_field(site, name)
        if query.where is None:
            return lambda issue: True
        return self._compile_node(site, query.where)

    def _compile_node(self, site: Site, node: Any) -> Callable[[Issue], bool]:
        if isinstance(node, BoolOp):
            parts = [self._compile_node(site, p) for p in node.parts]
            if node.op == "and":
                return lambda i: all(p(i) for p in parts)
            return lambda i: any(p(i) for p in parts)
        if isinstance(node, NotOp):
            inner = self._compile_node(site, node.part)
            return lambda i: not inner(i)
        preds = [self._compile_clause(site, node, kind, fid) for kind, fid in self._resolve_jql_field(site, node.field)]
        return lambda i: any(p(i) for p in preds)

    def _compile_clause(self, site: Site, c: Clause, kind: str, fid: str) -> Callable[[Issue], bool]:
        op = c.op
        label = c.field

        def unsupported() -> JqlError:
            return JqlError(f"The operator '{op.upper()}' is not supported by the '{label}' field.")

        def lookup(values: list[str | None], resolve: Callable[[str], str | None], what: str) -> set[str | None]:
            out: set[str | None] = set()
            for v in values:
                if v is None:
                    out.add(None)
                    continue
                r = resolve(v)
                if r is None:
                    raise JqlError(f"The value '{v}' does not exist for the field '{what}'.")
                out.add(r)
            return out

        # -- equality-style fields: (getter, resolver) --------------------------------------------
        getter: Callable[[Issue], Any]
        resolver: Callable[[str], Any]
        if kind == "project":
            getter = lambda i: i.project_key
            resolver = lambda v: next((p.key for p in site.projects.values()
                                       if v.upper() == p.key or v == p.id or v.lower() == p.name.lower()), None)
        elif kind == "issuetype":
            getter = lambda i: i.fields["issuetype"]
            resolver = lambda v: next((t.id for t in site.issue_types.values()
                                       if v == t.id or v.lower() == t.name.lower()), None)
        elif kind == "status":
            getter = lambda i: i.fields["status"]
            resolver = lambda v: next((s.id for s in site.statuses.values()
                                       if v == s.id or v.lower() == s.name.lower()), None)
        elif kind == "statusCategory":
            getter = lambda i: site.statuses[i.fields["status"]].category
            resolver = lambda v: next((k for k, c in STATUS_CATEGORIES.items()
                                       if v.lower() in (k, c["name"].lower(), str(c["id"]))), None)
        elif kind == "key":
            getter = lambda i: i.id

            def resolver(v: str) -> Any:
                if v.isdigit():
                    return int(v)
                try:
                    return site.issue(v).id
                except JiraHttpError:
                    raise JqlError(f"An issue with key '{v}' does not exist for field '{label}'.") from None
        elif kind in ("assignee", "reporter"):
            getter = lambda i: i.fields.get(kind)
            resolver = lambda v: v if v in site.users else None
        elif kind == "resolution":
            getter = lambda i: i.fields.get("resolution")
            resolver = lambda v: (next((r for r in _RESOLUTIONS if r.lower() == v.lower()), None)
                                  if v.lower() != "unresolved" else "__none__")
        elif kind == "labels":
            getter = lambda i: i.fields.get("labels") or None
            resolver = lambda v: v
        elif kind == "select":
            cf = site.custom_fields[fid]
            getter = lambda i: i.fields.get(fid)
            resolver = lambda v: v if v in cf.options else None
        elif kind in ("summary", "description", "text", "textfield", "textarea"):
            return self._compile_text_clause(site, c, kind, fid, unsupported)
        elif kind in ("float", "created", "updated", "datetime"):
            return self._compile_ordered_clause(site, c, kind, fid, unsupported)
        else:  # pragma: no cover - every kind is handled above
            raise unsupported()

        if op in ("is", "is not"):
            empty = lambda i: getter(i) in (None, [], "")
            return empty if op == "is" else (lambda i: not empty(i))
        if op not in ("=", "!=", "in", "not in"):
            raise unsupported()
        wanted = lookup(c.values, resolver, label)
        if kind == "resolution" and "__none__" in wanted:
            wanted = (wanted - {"__none__"}) | {None}

        def match(i: Issue) -> bool:
            v = getter(i)
            if isinstance(v, list):
                return any(x in wanted for x in v)
            return v in wanted

        if op in ("=", "in"):
            return match
        return lambda i: getter(i) not in (None, []) and not match(i)

    def _text_of(self, site: Site, issue: Issue, kind: str, fid: str) -> str | None:
        if kind == "text":
            parts = [issue.fields.get("summary") or "", adf_text(issue.fields.get("description") or "")]
            parts += [adf_text(issue.fields.get(cf.id) or "") if cf.kind == "textarea" else
                      str(issue.fields.get(cf.id) or "") for cf in site.custom_fields.values()
                      if cf.kind in ("textfield", "textarea")]
            return " ".join(parts)
        v = issue.fields.get(fid)
        if v is None:
            return None
        return adf_text(v) if isinstance(v, dict) else str(v)

    def _compile_text_clause(self, site: Site, c: Clause, kind: str, fid: str,
                             unsupported: Callable[[], JqlError]) -> Callable[[Issue], bool]:
        op = c.op
        text = lambda i: self._text_of(site, i, kind, fid)
        if op in ("is", "is not") and kind != "text":
            return (lambda i: not text(i)) if op == "is" else (lambda i: bool(text(i)))
        if op in ("~", "!~"):
            q = c.values[0]
            if q is None:
                raise JqlError(f"The operator '{op}' does not support the value EMPTY.")
            if op == "~":
                return lambda i: bool(text(i)) and text_matches(text(i), q)
            return lambda i: bool(text(i)) and not text_matches(text(i), q)
        # Exact equality exists for single-line custom text fields in this sandbox (the brief's cf[n] = "x").
        if kind == "textfield" and op in ("=", "!=", "in", "not in"):
            wanted = set(c.values)
            if op in ("=", "in"):
                return lambda i: text(i) in wanted
            return lambda i: text(i) is not None and text(i) not in wanted
        raise unsupported()

    def _compile_ordered_clause(self, site: Site, c: Clause, kind: str, fid: str,
                                unsupported: Callable[[], JqlError]) -> Callable[[Issue], bool]:
        op = c.op
        now = self.clock.now()
        if kind == "float":
            getter = lambda i: i.fields.get(fid)

            def conv(v: str) -> float:
                try:
                    return float(v)
                except ValueError:
                    raise JqlError(f"The value '{v}' is not a valid number for the field '{c.field}'.") from None
        else:
            if kind in ("created", "updated"):
                getter = lambda i: getattr(i, kind)
            else:
                def getter(i: Issue) -> datetime | None:
                    v = i.fields.get(fid)
                    return _parse_jql_date(v, now) if v else None
            conv = lambda v: _parse_jql_date(v, now)
        if op in ("is", "is not"):
            return (lambda i: getter(i) is None) if op == "is" else (lambda i: getter(i) is not None)
        if op in ("~", "!~"):
            raise unsupported()
        values = [conv(v) for v in c.values if v is not None]
        if not values:
            raise JqlError(f"The operator '{op}' does not support the value EMPTY.")
        cmp = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
               ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
        if op in ("in", "not in"):
            s = set(values)
            return (lambda i: getter(i) in s) if op == "in" else (lambda i: getter(i) is not None and getter(i) not in s)
        f = cmp[op]
        return lambda i: getter(i) is not None and f(getter(i), values[0])

    def _order(self, site: Site, issues: list[Issue], order_by: list[tuple[str, str]]) -> list[Issue]:
        out = sorted(issues, key=lambda i: i.id)  # no ORDER BY: oldest first (Jira leaves it unspecified)
        for name, direction in reversed(order_by):
            kind, fid = self._resolve_jql_field(site, name)[0]

            def key(i: Issue, kind: str = kind, fid: str = fid) -> Any:
                if kind == "key":
                    proj, num = i.key.rsplit("-", 1)
                    return (proj, int(num))
                if kind in ("created", "updated"):
                    return getattr(i, kind)
                if kind == "status":
                    return site.statuses[i.fields["status"]].name
                if kind == "statusCategory":
                    return STATUS_CATEGORIES[site.statuses[i.fields["status"]].category]["id"]
                if kind == "project":
                    return i.project_key
                if kind == "issuetype":
                    return site.issue_types[i.fields["issuetype"]].name
                v = i.fields.get(fid)
                return adf_text(v) if isinstance(v, dict) else v

            present = [i for i in out if key(i) is not None]
            missing = [i for i in out if key(i) is None]
            present.sort(key=key, reverse=direction == "desc")
            out = present + missing
        return out
