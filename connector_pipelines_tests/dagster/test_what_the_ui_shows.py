"""What finance ops see in the Dagster UI tells them what the code location does (issue 13, item 5).

Found in the UI: 4 of 6 schedules had no description; a run launched from an asset page (Materialize,
a backfill, a check's Execute: Dagster's implicit asset job) had none of the ``connector/*`` tags that
sensor-launched runs carry, so filtering the runs by pair missed it; the lineage had no edge from a
webhook inbox to the assets it feeds; the inboxes showed a disabled Materialize button and "Never
materialized" without saying why. Everything here runs over the loaded code location; no vendor is
reached (the runs below stop before any vendor call, or never make one).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from connector_pipelines.components import integration_pair
from connector_pipelines.core import db
from connector_pipelines.integrations.definition import IntegrationDefinition

DEFS_FOLDER = Path(__file__).resolve().parents[2] / "connector_pipelines" / "defs"
PAIRS = [IntegrationDefinition.model_validate(yaml.safe_load(p.read_text())["attributes"])
         for p in sorted(DEFS_FOLDER.glob("*/defs.yaml"))]
STABLE = ("connector/integration", "connector/source", "connector/target")
DUMMY_SETTINGS = ("CONNECTOR_BC_TENANT_ID", "CONNECTOR_BC_ENVIRONMENT", "CONNECTOR_BC_CLIENT_ID",
                  "CONNECTOR_BC_CLIENT_SECRET", "CONNECTOR_JIRA_CLIENT_ID", "CONNECTOR_JIRA_CLIENT_SECRET",
                  "CONNECTOR_JIRA_SITE_URL")
BC_BACKLOG = dg.AssetKey(["bc_jira", "inbox", "business_central"])
BLOCKED_VENDORS = dg.AssetKey(["business_central", "blocked_vendors"])


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """A throwaway Dagster instance and project database; vendor settings are placeholders nothing dials."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    url = f"sqlite:///{tmp_path}/connector.sqlite"
    monkeypatch.setenv("CONNECTOR_DATABASE_URL", url)
    for name in DUMMY_SETTINGS:
        monkeypatch.setenv(name, "http://127.0.0.1:9" if name.endswith("_URL") else "dummy")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        yield inst
    engine = db._engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def run_tags(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """The run's tags as stored now (a step may have added some after the run was created)."""
    return dict(instance.get_run_by_id(result.run_id).tags)


def pair_tags(pair: IntegrationDefinition) -> dict[str, str]:
    return dict(zip(STABLE, (pair.name, pair.source, pair.target.system), strict=True))


# -- descriptions ----------------------------------------------------------------------------------------------
def test_every_schedule_sensor_and_job_says_what_it_does(repo):
    described = {**{f"schedule {s.name}": s.description for s in repo.schedule_defs},
                 **{f"sensor {s.name}": s.description for s in repo.sensor_defs},
                 **{f"job {j.name}": j.description for j in repo.get_all_jobs() if not j.name.startswith("__")}}
    assert len(described) > 40
    assert [what for what, text in described.items() if not (text and text.strip())] == []
    # a sentence, not a label: the UI shows it beside the name, which already names the thing
    assert [what for what, text in described.items() if len(text.split()) < 6] == []


def test_the_hourly_and_nightly_schedules_say_what_they_do_in_business_words(repo):
    schedules = {s.name: s.description for s in repo.schedule_defs}
    assert "exactly one open Jira record" in schedules["bc_jira__reconcile_schedule"]
    assert "Monday.com" in schedules["d365_monday__repair_schedule"]
    assert "Business Central webhook subscriptions" in schedules["bc_jira__subscription_renewal_schedule"]
    assert "register the Jira webhook" in schedules["acumatica_jira__jira_webhook_renewal_schedule"]


# -- connector/* run tags --------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_every_job_of_a_pair_carries_its_stable_connector_tags(repo, pair):
    jobs = [j for j in repo.get_all_jobs() if j.name.startswith(f"{pair.name}__")]
    assert len(jobs) >= 5
    for job in jobs:
        assert {k: job.run_tags.get(k) for k in STABLE} == pair_tags(pair), job.name
        assert job.run_tags.get("connector/trigger"), job.name   # poll, webhook, retry, reconcile, ...


def test_a_job_run_in_process_carries_its_pair_s_tags(defs, instance, monkeypatch):
    # nothing is due: the retry op builds its adapters (stubbed: no vendor) and writes nothing
    monkeypatch.setattr(integration_pair, "make_source", lambda *_a, **_k: object())
    monkeypatch.setattr(integration_pair, "make_writer", lambda *_a, **_k: object())
    job = defs.resolve_job_def("bc_jira__retry_job")
    result = job.execute_in_process(instance=instance,
                                    run_config={"ops": {"bc_jira__retry_records": {"config": {"ledger_ids": []}}}})
    assert result.success
    tags = run_tags(instance, result)
    assert {k: tags.get(k) for k in STABLE} == {"connector/integration": "bc_jira",
                                                "connector/source": "business_central", "connector/target": "jira"}
    assert tags["connector/trigger"] == "retry"


def test_a_check_executed_from_the_asset_page_is_tagged_with_its_pair(defs, instance):
    # the asset page's Execute runs Dagster's implicit asset job, which has no tags of ours
    ui_job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={dg.AssetCheckKey(BC_BACKLOG, "no_dead_letters")})
    assert not any(k.startswith("connector/") for k in ui_job.run_tags)
    result = ui_job.execute_in_process(instance=instance)
    assert result.success
    tags = run_tags(instance, result)
    assert {k: tags.get(k) for k in STABLE} == {"connector/integration": "bc_jira",
                                                "connector/source": "business_central", "connector/target": "jira"}
    assert tags["connector/trigger"] == "manual"


def test_an_asset_materialized_from_the_ui_is_tagged_even_when_its_run_fails(defs, instance, monkeypatch):
    def unreachable(*_args, **_kwargs):
        raise dg.Failure("Business Central is unreachable (test)", allow_retries=False)

    monkeypatch.setattr(integration_pair, "make_source", unreachable)
    ui_job = defs.resolve_implicit_job_def_def_for_assets([BLOCKED_VENDORS])
    result = ui_job.execute_in_process(instance=instance, asset_selection=[BLOCKED_VENDORS],
                                       partition_key="2026-11-01-00:00", raise_on_error=False)
    assert not result.success                     # the failed run is the one a person looks for by pair
    tags = run_tags(instance, result)
    assert tags["connector/integration"] == "bc_jira" and tags["connector/trigger"] == "manual"


def test_a_tag_given_at_launch_is_kept(defs, instance):
    ui_job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={dg.AssetCheckKey(BC_BACKLOG, "no_dead_letters")})
    result = ui_job.execute_in_process(instance=instance, tags={"connector/trigger": "month-end check by ana"})
    tags = run_tags(instance, result)
    assert tags["connector/trigger"] == "month-end check by ana" and tags["connector/integration"] == "bc_jira"


# -- the inboxes in the lineage --------------------------------------------------------------------------------
def announced(entity) -> bool:
    return entity.webhook or bool(entity.business_event) or bool(entity.push_query)


@pytest.mark.parametrize("source", sorted({p.source for p in PAIRS}))
def test_an_inbox_feeds_the_assets_its_deliveries_announce_and_each_reader_s_backlog(repo, source):
    expected = {dg.AssetKey([p.source, e.name]) for p in PAIRS if p.source == source for e in p.entities
                if announced(e)}
    expected |= {dg.AssetKey([p.name, "inbox", source]) for p in PAIRS if p.source == source}
    assert repo.asset_graph.get(dg.AssetKey(["inbox", source])).child_keys == expected


def test_the_lineage_edges_are_the_announced_sets_only(repo):
    parents = repo.asset_graph.get(BLOCKED_VENDORS).parent_keys
    assert dg.AssetKey(["inbox", "business_central"]) in parents            # a BC subscription announces vendors
    stuck = repo.asset_graph.get(dg.AssetKey(["business_central", "stuck_purchase_orders"]))
    assert stuck.parent_keys == set()                                        # polled only: no webhook
    invoices = repo.asset_graph.get(dg.AssetKey(["finance_operations", "vendor_invoice_items"]))
    assert invoices.parent_keys == {dg.AssetKey(["inbox", "finance_operations"]),   # a business event
                                    dg.AssetKey(["finance_operations", "vendor_items"])}   # links to vendors
    # the target inboxes feed the resolution runs (op jobs), which materialize no asset: only the backlogs
    assert repo.asset_graph.get(dg.AssetKey(["inbox", "jira"])).child_keys == {
        dg.AssetKey([p.name, "inbox", "jira"]) for p in PAIRS if p.target.system == "jira"}


@pytest.mark.parametrize("source", sorted({p.source for p in PAIRS} | {"jira", "monday"}))
def test_an_inbox_says_the_receiver_feeds_it_and_why_it_cannot_be_materialized(repo, source):
    node = repo.asset_graph.get(dg.AssetKey(["inbox", source]))
    assert node.is_external and not node.is_materializable
    assert "Fed by the webhook receiver" in node.description
    assert "nothing to materialize" in node.description and "observation" in node.description
