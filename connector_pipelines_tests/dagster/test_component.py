"""IntegrationPairComponent loaded from YAML the way Dagster loads a defs folder.

``dg check yaml`` checks structure only (DAGSTER-STYLE rule 2); these tests pin that a bad *value*
in a pair's defs.yaml stops the load with a pydantic error naming the field and the file, and that
one defs.yaml is one self-contained pair: a second instance gets its own asset group, jobs,
sensors and schedules, and its Jira sensor reads its own project.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pydantic
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from connector_pipelines.components.integration_pair import IntegrationPairComponent
from connector_pipelines.components.resources import ConnectorStore, resources_from_env
from connector_pipelines.core import db

SHIPPED = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs" / "bc_jira" / "defs.yaml"
COMPONENT_TYPE = "connector_pipelines.components.IntegrationPairComponent"

SECOND = {
    "type": COMPONENT_TYPE,
    "attributes": {
        "name": "bc_ops",
        "source": "business_central",
        "company": "CRONUS Canada, Inc.",
        "owners": ["team:ops"],
        "target": {"project_key": "OPS"},
        "polling": {"go_live": "2027-01-01"},
        "entities": [{
            "name": "overdue_sales_invoices",
            "description": "A posted sales invoice is past its due date.",
            "entity_set": "salesInvoices",
            "document_label": "Sales invoice",
            "exception": [{"field": "status", "op": "eq", "value": "Open"}],
            "summary": "Sales invoice {number} is overdue",
        }],
    },
}
SECOND_JOBS = {f"bc_ops__{j}" for j in ("poll_job", "notification_job", "resolution_job", "subscription_renewal_job",
                                         "jira_webhook_renewal_job", "reconcile_job", "retry_job", "repair_job",
                                         "redrive_job")}


def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def load(*docs: dict) -> tuple[list[dg.Component], dg.Definitions]:
    """Each doc becomes defs/<pair_i>/defs.yaml of a fresh sandbox project; returns components and all defs."""
    with create_defs_folder_sandbox() as sandbox:
        paths = []
        for i, doc in enumerate(docs):
            path = sandbox.defs_folder_path / f"pair_{i}"
            path.mkdir()
            (path / "defs.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            paths.append(path)
        with sandbox.build_component_tree() as tree:
            return [tree.load_component(p) for p in paths], tree.build_defs()


def validation_error(exc: BaseException) -> pydantic.ValidationError:
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, pydantic.ValidationError):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no pydantic ValidationError behind {exc!r}"
    return seen


def entity0(doc: dict) -> dict:
    return doc["attributes"]["entities"][0]


BAD_VALUES: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("jira_field_kind_from_another_target", lambda d: entity0(d)["fields"][0].update(kind="board_relation"),
     "()", "kind 'board_relation' is not a Jira field kind (text, number, adf)"),
    ("write_back_to_a_source_that_takes_none", lambda d: entity0(d).update(write_back=[{"column": "a", "field": "b"}]),
     "()", "Business Central takes no write-back of fields yet: entities ['blocked_vendors']"),
    ("op_like", lambda d: entity0(d)["exception"][0].update(op="like"),
     "EntitySync]].0.exception.0.op", "'eq', 'ne', 'in', 'not_in' or 'older_than_days'"),
    ("unknown_resolution", lambda d: entity0(d).update(resolution="delete_vendor"),
     "()", ("resolution 'delete_vendor' is not one Business Central offers (record_outcome, post_purchase_invoice, "
           "unblock_vendor)")),
    ("no_exception_rules", lambda d: entity0(d).update(exception=[]),
     "EntitySync]].0", "at least one exception rule"),
    ("in_without_list", lambda d: entity0(d)["exception"][0].update(value="Payment"),
     "EntitySync]].0.exception.0", "op 'in' needs a list value"),
    ("unknown_source", lambda d: d["attributes"].update(source="sap"),
     "source", "unknown source system 'sap'; sources are acumatica, business_central, finance_operations"),
    ("source_action_without_state_check", lambda d: entity0(d).update(resolution="source_action",
                                                                      action="SubmitToWorkflow"),
     "EntitySync]].0", "needs action and state_check"),
    ("update_fields_without_state_check", lambda d: entity0(d).update(resolution="update_fields",
                                                                      updates={"Hold": False}),
     "EntitySync]].0", "needs updates and state_check"),
    ("business_event_without_keys", lambda d: entity0(d).update(business_event="VendorInvoicePostedBusinessEvent"),
     "EntitySync]].0", "business_event needs event_keys"),
    ("bad_go_live", lambda d: d["attributes"]["polling"].update(go_live="2026-13-01"),
     "polling.PollingSettings.go_live", "month must be in 1..12"),
    ("misspelt_key", lambda d: d["attributes"]["target"].update(projectkey="FIN"),
     "target.JiraTarget.projectkey", "Extra inputs are not permitted"),
    ("camel_case_entity", lambda d: entity0(d).update(name="BlockedVendors"),
     "EntitySync]].0.name", "must be snake_case"),
]


@pytest.mark.parametrize(("case", "mutate", "where", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_in_defs_yaml_fails_the_load_naming_the_problem(case, mutate, where, message):
    doc = shipped()
    mutate(doc)
    with pytest.raises(Exception) as caught:
        load(doc)
    error = validation_error(caught.value)
    problems = [(str(e["loc"]), e["msg"]) for e in error.errors()]
    assert any(where in loc and message in msg for loc, msg in problems), problems
    assert "defs.yaml" in str(caught.value)  # the file a person has to fix


def test_the_shipped_yaml_loads_as_the_component():
    [component], defs = load(shipped())
    assert isinstance(component, IntegrationPairComponent)
    assert component.name == "bc_jira" and component.target.project_key == "FIN"
    assert {a.key for a in defs.assets} == {dg.AssetKey(["business_central", e["name"]])
                                            for e in shipped()["attributes"]["entities"]} | {
        dg.AssetKey(["bc_jira", "inbox", s]) for s in ("business_central", "jira")}


def test_a_second_yaml_is_its_own_pair(tmp_path, monkeypatch):
    [component], defs = load(SECOND)
    assert isinstance(component, IntegrationPairComponent)
    repo = dg.Definitions.merge(defs, dg.Definitions(resources=resources_from_env())).get_repository_def()

    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == SECOND_JOBS
    assert {s.name for s in repo.sensor_defs} == {"bc_ops__business_central_inbox_sensor", "bc_ops__jira_inbox_sensor",
                                                  "bc_ops__ledger_retry_sensor"}
    assert {s.name for s in repo.schedule_defs} == {"bc_ops__poll_schedule", "bc_ops__reconcile_schedule",
                                                    "bc_ops__repair_schedule", "bc_ops__subscription_renewal_schedule",
                                                    "bc_ops__jira_webhook_renewal_schedule"}
    key = dg.AssetKey(["business_central", "overdue_sales_invoices"])
    # plus the pair's backlog on each inbox it reads, downstream of the shared inboxes
    inboxes = ("business_central", "jira")
    assert set(repo.asset_graph.get_all_asset_keys()) == {key} | {
        dg.AssetKey(["bc_ops", "inbox", s]) for s in inboxes} | {dg.AssetKey(["inbox", s]) for s in inboxes}
    node = repo.asset_graph.get(key)
    assert node.group_name == "bc_ops" and node.owners == ["team:ops"]
    assert node.partitions_def.start == datetime(2027, 1, 1, tzinfo=UTC)
    assert repo.get_job("bc_ops__poll_job").tags["connector/integration"] == "bc_ops"

    # its Jira sensor reads project OPS, not the FIN of the shipped pair
    url = f"sqlite:///{tmp_path}/connector.sqlite"
    monkeypatch.setenv("CONNECTOR_DATABASE_URL", url)
    store = ConnectorStore(database_url=url)
    try:
        inbox = store.inbox()
        moved = {"webhookEvent": "jira:issue_updated", "changelog": {"items": [{"field": "status"}]}}
        inbox.put("jira", "d1", {"event": {**moved, "issue": {"key": "FIN-1", "fields": {"project": {"key": "FIN"}}}}})
        inbox.put("jira", "d2", {"event": {**moved, "issue": {"key": "OPS-7", "fields": {"project": {"key": "OPS"}}}}})
        with dg.instance_for_test() as instance, dg.build_sensor_context(
                instance=instance, resources={"connector_store": store}) as ctx:
            result = repo.get_sensor_def("bc_ops__jira_inbox_sensor").evaluate_tick(ctx)
        [request] = result.run_requests
        assert request.run_config == {"ops": {"bc_ops__apply_jira_resolutions": {"config": {"inbox_ids": [2]}}}}
    finally:
        engine = db._engines.pop(url, None)
        if engine is not None:
            engine.dispose()


def test_two_pairs_side_by_side_load_without_collisions():
    second = copy.deepcopy(SECOND)
    _, defs = load(shipped(), second)
    full = dg.Definitions.merge(defs, dg.Definitions(resources=resources_from_env()))
    dg.Definitions.validate_loadable(full)
    names = {j.name for j in full.get_repository_def().get_all_jobs() if not j.name.startswith("__")}
    assert names == SECOND_JOBS | {n.replace("bc_ops", "bc_jira") for n in SECOND_JOBS}
