"""The declarative integration definition: bad YAML values fail loudly; rules and templates behave."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from connector_pipelines.integrations.definition import (
    ExceptionRule,
    IntegrationDefinition,
    render,
    to_number,
)

DEFS_YAML = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "bc_jira" / "defs.yaml"


def bc_jira() -> dict:
    return yaml.safe_load(DEFS_YAML.read_text())["attributes"]


def test_shipped_bc_jira_definition_is_valid():
    d = IntegrationDefinition.model_validate(bc_jira())
    assert [e.name for e in d.entities] == ["blocked_vendors", "purchase_invoices_awaiting_review",
                                            "stuck_purchase_orders"]
    assert d.entity("purchase_invoices_awaiting_review").resolution == "post_purchase_invoice"
    assert d.entity("blocked_vendors").resolution == "unblock_vendor"
    # purchase orders are not webhook-supported in BC: polled only
    assert d.entity("stuck_purchase_orders").webhook is False


@pytest.mark.parametrize("patch, message", [
    (lambda a: a["entities"][0].update(resolution="delete_vendor"), "resolution"),
    (lambda a: a["entities"][0]["exception"][0].update(op="like"), "op"),
    (lambda a: a["entities"][0]["exception"][0].update(op="in", value="Payment"), "needs a list"),
    (lambda a: a["entities"][0].update(exception=[]), "at least one exception rule"),
    (lambda a: a["entities"][1].update(name="blocked_vendors"), "unique"),
    (lambda a: a["entities"][0].update(name="Blocked-Vendors"), "snake_case"),
    (lambda a: a["polling"].update(go_live="01/11/2026"), "go_live"),
    (lambda a: a.update(source="sap"), "source"),
    (lambda a: a["target"].update(projectkey="X"), "projectkey"),
])
def test_bad_values_are_rejected_with_a_pointer(patch, message):
    attrs = bc_jira()
    patch(attrs)
    with pytest.raises(ValidationError) as err:
        IntegrationDefinition.model_validate(attrs)
    assert message in str(err.value)


def test_rules():
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert ExceptionRule(field="blocked", op="in", value=["All"]).matches({"blocked": "All"})
    assert not ExceptionRule(field="blocked", op="in", value=["All"]).matches({"blocked": " "})
    assert ExceptionRule(field="status", op="ne", value="Open").matches({"status": "Draft"})
    assert ExceptionRule(field="status", op="not_in", value=["Open"]).matches({"status": "Draft"})
    old = ExceptionRule(field="orderDate", op="older_than_days", value=7)
    assert old.matches({"orderDate": "2026-11-10"}, now)
    assert not old.matches({"orderDate": "2026-11-20"}, now)
    assert not old.matches({"orderDate": None}, now)
    assert old.matches({"orderDate": "2026-11-01T10:00:00Z"}, now)


def test_render_and_numbers():
    rec = {"number": "108001", "vendorName": "Fabrikam", "totalAmountIncludingTax": 1234.5, "currencyCode": None}
    assert render("Invoice {number} from {vendorName}: {totalAmountIncludingTax} {currencyCode}", rec) == \
        "Invoice 108001 from Fabrikam: 1,234.50"
    assert render("{missing}x", rec) == "x"
    assert to_number("1,234.50") == 1234.5
    assert to_number("n/a") is None


MONDAY_YAML = DEFS_YAML.parents[1] / "d365_monday" / "defs.yaml"


def d365_monday() -> dict:
    return yaml.safe_load(MONDAY_YAML.read_text())["attributes"]


def test_posted_journal_entries_are_a_read_only_mirror_on_their_own_board():
    d = IntegrationDefinition.model_validate(d365_monday())
    journal = d.entity("journal_entry_items")
    assert journal.read_only and journal.mirror and journal.entity_set == "GeneralJournalAccountEntries"
    assert not journal.write_back and journal.outcome_field is None and journal.resolution == "record_outcome"
    assert d.target.boards["journal_entry_items"] not in {d.target.boards[e.name] for e in d.entities
                                                           if e.name != "journal_entry_items"}
    assert [e.name for e in d.entities if e.read_only] == ["journal_entry_items"]


@pytest.mark.parametrize("patch, message", [
    (lambda e: e.update(write_back=[{"column": "amount", "field": "TransactionCurrencyAmount"}]), "drop write_back"),
    (lambda e: e.update(outcome_field="Description"), "drop outcome_field"),
    (lambda e: e.update(resolution="source_action", action="Reverse",
                        state_check={"field": "IsCorrection", "due": ["No"]}), "resolution source_action"),
])
def test_a_read_only_entity_takes_nothing_that_writes_to_the_source(patch, message):
    attrs = d365_monday()
    patch(next(e for e in attrs["entities"] if e["name"] == "journal_entry_items"))
    with pytest.raises(ValidationError) as err:
        IntegrationDefinition.model_validate(attrs)
    assert "read_only" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(("override", "first"), [(None, "2026-11-01-00:00"), ("2026-12-03", "2026-12-03-00:00"),
                                                 ("2026-12-03-19:00", "2026-12-03-19:00")])
def test_the_first_window_is_go_live_unless_the_deployment_sets_one(monkeypatch, override, first):
    if override is None:
        monkeypatch.delenv("CONNECTOR_GO_LIVE", raising=False)
    else:
        monkeypatch.setenv("CONNECTOR_GO_LIVE", override)
    assert IntegrationDefinition.model_validate(bc_jira()).polling.first_window() == first


def test_a_malformed_go_live_override_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CONNECTOR_GO_LIVE", "03/12/2026")
    with pytest.raises(ValueError, match="CONNECTOR_GO_LIVE='03/12/2026' is neither"):
        IntegrationDefinition.model_validate(bc_jira()).polling.first_window()
