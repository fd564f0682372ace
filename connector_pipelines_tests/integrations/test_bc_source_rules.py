"""The Business Central adapter's pure rules: OData literals and filters pushed down from exception rules,
and the window start read from a collection notification. No HTTP here."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from connector_pipelines.integrations.definition import ExceptionRule


def bc():
    # imported lazily: the adapter depends on the Business Central client package
    return importlib.import_module("connector_pipelines.integrations.sources.business_central")


def rule(field: str, op: str, value) -> ExceptionRule:
    return ExceptionRule(field=field, op=op, value=value)


# -- odata_literal -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, literal", [
    ("Draft", "'Draft'"),
    ("O'Brien", "'O''Brien'"),
    ("''", "''''''"),
    (" ", "' '"),
    ("", "''"),
    (True, "true"),   # a bool is not the number 1
    (False, "false"),
    (0, "0"),
    (42, "42"),
    (12.5, "12.5"),
])
def test_odata_literal(value, literal):
    assert bc().odata_literal(value) == literal


def test_odata_literal_cannot_be_broken_out_of():
    literal = bc().odata_literal("x' or 1 eq 1 or number eq '")
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    # every quote inside is doubled: no single quote ends the string early
    assert inner.replace("''", "").count("'") == 0


# -- odata_filter ----------------------------------------------------------------------------------------
def test_eq_and_ne():
    assert bc().odata_filter([rule("status", "eq", "Draft")]) == "status eq 'Draft'"
    assert bc().odata_filter([rule("status", "ne", "Open")]) == "status ne 'Open'"
    assert bc().odata_filter([rule("amount", "eq", 10)]) == "amount eq 10"
    assert bc().odata_filter([rule("blocked", "eq", True)]) == "blocked eq true"


def test_in_becomes_a_parenthesised_or():
    assert bc().odata_filter([rule("blocked", "in", ["Payment", "All"])]) == \
        "(blocked eq 'Payment' or blocked eq 'All')"
    assert bc().odata_filter([rule("status", "in", ["Draft"])]) == "(status eq 'Draft')"


def test_not_in_becomes_a_parenthesised_and():
    assert bc().odata_filter([rule("status", "not_in", ["Open", "Paid"])]) == \
        "(status ne 'Open' and status ne 'Paid')"


def test_rules_are_joined_with_and_and_quotes_are_escaped():
    f = bc().odata_filter([rule("status", "in", ["Draft", "In Review"]), rule("vendorName", "ne", "O'Neil")])
    assert f == "(status eq 'Draft' or status eq 'In Review') and vendorName ne 'O''Neil'"


def test_older_than_days_stays_client_side():
    rules = [rule("status", "in", ["Draft", "In Review"]), rule("orderDate", "older_than_days", 7)]
    assert bc().odata_filter(rules) == "(status eq 'Draft' or status eq 'In Review')"
    assert bc().odata_filter([rule("orderDate", "older_than_days", 7)]) is None


def test_empty_lists_push_nothing_down():
    assert bc().odata_filter([rule("status", "in", [])]) is None
    assert bc().odata_filter([rule("status", "not_in", []), rule("status", "eq", "Draft")]) == "status eq 'Draft'"
    assert bc().odata_filter([]) is None


def test_the_pushed_filter_never_drops_a_record_the_rules_accept():
    """The server-side filter may only narrow to a superset of the client-side match."""
    rules = [rule("blocked", "in", ["Payment", "All"]), rule("currencyCode", "ne", "USD"),
             rule("status", "not_in", ["Closed"])]
    flt = bc().odata_filter(rules)
    records = [{"blocked": b, "currencyCode": c, "status": s}
               for b in ("Payment", "All", " ", "Ship") for c in ("USD", "EUR") for s in ("Open", "Closed")]
    for r in records:
        expected = all(x.matches(r) for x in rules)
        assert _eval(flt, r) == expected, (flt, r)


def _eval(flt: str, record: dict) -> bool:
    """A tiny evaluator for the filters above: and of clauses, each either a parenthesised or/and group
    or a single ``field op 'literal'``."""
    def clause(text: str) -> bool:
        field, op, literal = text.split(" ", 2)
        value = literal[1:-1].replace("''", "'")
        return (record.get(field) == value) if op == "eq" else (record.get(field) != value)

    def group(text: str) -> bool:
        if text.startswith("("):
            inner = text[1:-1]
            if " or " in inner:
                return any(clause(c) for c in inner.split(" or "))
            return all(clause(c) for c in inner.split(" and "))
        return clause(text)

    parts, depth, current = [], 0, ""
    tokens = flt.split(" and ")
    for tok in tokens:  # re-join the and-tokens that sit inside parentheses
        current = f"{current} and {tok}" if current else tok
        depth = current.count("(") - current.count(")")
        if depth == 0:
            parts.append(current)
            current = ""
    return all(group(p) for p in parts)


# -- _collection_since ---------------------------------------------------------------------------------------
CO = "/api/v2.0/companies(11111111-2222-3333-4444-555555555555)/purchaseInvoices"


@pytest.mark.parametrize("resource, expected", [
    (CO + "?$filter=lastModifiedDateTime%20gt%202026-11-20T10:15:30Z",
     datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)),
    (CO + "?$filter=lastModifiedDateTime gt 2026-11-20T10:15:30Z",
     datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)),
    (CO + "?$filter=lastModifiedDateTime gt 2019-09-30T06:27:25.333Z",
     datetime(2019, 9, 30, 6, 27, 25, 333000, tzinfo=UTC)),
    # the docs spell the property both ways
    (CO + "?$filter=lastDateTimeModified%20gt%202026-11-20T10:15:30Z",
     datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)),
    # quoted, and followed by more of the filter
    (CO + "?$filter=lastModifiedDateTime gt '2026-11-20T10:15:30Z' and status eq 'Draft'",
     datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)),
    # an explicit offset, percent-encoded
    (CO + "?$filter=lastModifiedDateTime%20gt%202026-11-20T11:15:30%2B01:00",
     datetime(2026, 11, 20, 11, 15, 30, tzinfo=timezone(timedelta(hours=1)))),
])
def test_collection_since_reads_the_lower_bound(resource, expected):
    since = bc()._collection_since(resource)
    assert since == expected
    assert since.tzinfo is not None and since.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("resource", [
    CO,                                                      # no query at all
    CO + "?$filter=status eq 'Draft'",                       # no time bound
    CO + "?$filter=lastModifiedDateTime lt 2026-11-20T10:15:30Z",  # an upper bound is not a start
    CO + "?$filter=lastModifiedDateTime gt yesterday",       # not a timestamp
])
def test_collection_since_is_none_without_a_usable_lower_bound(resource):
    assert bc()._collection_since(resource) is None


def test_collection_since_stops_at_a_following_query_parameter():
    from connector_pipelines.integrations.sources.business_central import _collection_since

    got = _collection_since("/api/v2.0/companies(c)/purchaseInvoices?$filter=lastModifiedDateTime gt "
                            "2026-11-20T10:15:30Z&$top=5")
    assert got is not None and got.isoformat() == "2026-11-20T10:15:30+00:00"
