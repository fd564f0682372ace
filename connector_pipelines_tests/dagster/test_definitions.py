"""The code location as Dagster loads it (defs/ through load_from_defs_folder), checked by name.

A renamed job or sensor silently orphans its schedule history and the runbooks that name it; a
missing owner, kind or group hides an asset in the UI finance ops work from; a paused-by-default
sensor means webhooks pile up unread after a deploy. Every assertion below names one of those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK_NAME = "every_exception_has_one_open_issue"
GO_LIVE = datetime(2026, 11, 1, tzinfo=UTC)


class Pair:
    """What one shipped defs/<pair>/defs.yaml must become."""

    def __init__(self, name: str, source: str, entities: tuple[str, ...], owner: str, *, polls: bool,
                 subscriptions: bool, target: str = "jira", returns: bool = True,
                 mirrors: tuple[str, ...] = ()) -> None:
        self.name, self.source, self.entities, self.owner = name, source, entities, owner
        self.entity_keys = {dg.AssetKey([source, e]) for e in entities}
        self.mirrors = mirrors
        self.polled_keys = {dg.AssetKey([source, e]) for e in entities if e not in mirrors}
        self.target = target
        jobs = ["notification_job", "reconcile_job", "retry_job", "repair_job", "redrive_job"]
        if self.polled_keys:   # a pair of mirrors only has no time windows to poll or replay
            jobs.append("poll_job")
        schedules = {"reconcile_schedule": "reconcile_job", "repair_schedule": "repair_job"}
        if mirrors:   # mirrored sets no event announces: a full read per legal entity, nightly
            jobs.append("mirror_job")
            schedules["mirror_schedule"] = "mirror_job"
        if returns:   # the target's changes act back on the source; the target's webhook is kept registered
            jobs += ["resolution_job", f"{target}_webhook_renewal_job"]
            schedules[f"{target}_webhook_renewal_schedule"] = f"{target}_webhook_renewal_job"
        if polls:
            schedules["poll_schedule"] = "poll_job"
        elif set(entities) - set(mirrors):   # windows of events received in an hour: closed once it ends
            schedules["window_close_schedule"] = "poll_job"
        if subscriptions:
            jobs.append("subscription_renewal_job")
            schedules["subscription_renewal_schedule"] = "subscription_renewal_job"
        self.jobs = {f"{name}__{j}" for j in jobs}
        self.sensor_jobs = {f"{name}__{source}_inbox_sensor": f"{name}__notification_job",
                            f"{name}__ledger_retry_sensor": f"{name}__retry_job"}
        if returns:
            self.sensor_jobs[f"{name}__{target}_inbox_sensor"] = f"{name}__resolution_job"
        self.backlog_keys = {dg.AssetKey([name, "inbox", s]) for s in ((source, target) if returns else (source,))}
        self.schedule_jobs = {f"{name}__{k}": f"{name}__{v}" for k, v in schedules.items()}


BC = Pair("bc_jira", "business_central",
          ("blocked_vendors", "purchase_invoices_awaiting_review", "stuck_purchase_orders"), "team:finance-ops",
          polls=True, subscriptions=True)
FO = Pair("d365_jira", "finance_operations",
          ("vendor_invoices_posted", "purchase_orders_confirmed", "purchase_orders_rejected_in_workflow"),
          "team:accounts-payable", polls=False, subscriptions=False)
ACU = Pair("acumatica_jira", "acumatica",
           ("bills_needing_attention", "vendor_payments_needing_attention", "purchase_orders_needing_attention"),
           "team:accounts-payable", polls=True, subscriptions=False)
MONDAY = Pair("d365_monday", "finance_operations",
              ("vendor_items", "vendor_invoice_items", "purchase_order_items", "journal_entry_items"),
              "team:accounts-payable", polls=False, subscriptions=False, target="monday",
              mirrors=("vendor_items", "vendor_invoice_items", "purchase_order_items", "journal_entry_items"))
PAIRS = [BC, FO, ACU, MONDAY]
SOURCES = [p.source for p in PAIRS]
ENTITY_KEYS = set().union(*(p.entity_keys for p in PAIRS))
INBOX_KEYS = {dg.AssetKey(["inbox", s]) for s in [*SOURCES, "jira", "monday"]}
BACKLOG_KEYS = set().union(*(p.backlog_keys for p in PAIRS))
DEAD_LETTERS = "no_dead_letters"
NEEDS_A_PERSON = "no_record_needs_a_person"   # the ledger's view, evaluated with every materialization
ENTITIES = [(p, e) for p in PAIRS for e in p.entities]


def test_the_definitions_are_loadable(defs):
    dg.Definitions.validate_loadable(defs)


def test_assets_are_the_entities_the_inboxes_and_each_pair_s_backlogs(repo):
    assert set(repo.asset_graph.get_all_asset_keys()) == ENTITY_KEYS | INBOX_KEYS | BACKLOG_KEYS


def test_each_entity_has_its_reconcile_and_ledger_checks_and_each_backlog_its_dead_letter_check(repo):
    assert set(repo.asset_graph.asset_check_keys) == (
        {dg.AssetCheckKey(k, CHECK_NAME) for k in ENTITY_KEYS} | {dg.AssetCheckKey(k, NEEDS_A_PERSON)
                                                                   for k in ENTITY_KEYS}
        | {dg.AssetCheckKey(k, DEAD_LETTERS) for k in BACKLOG_KEYS})


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_backlog_assets_are_external_in_the_pair_s_group_downstream_of_the_inbox(repo, pair):
    for key in pair.backlog_keys:
        node = repo.asset_graph.get(key)
        assert node.is_external and not node.is_materializable and node.group_name == pair.name
        assert node.parent_keys == {dg.AssetKey(["inbox", key.path[-1]])}


def test_jobs_by_name(repo):
    user_jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert user_jobs == set().union(*(p.jobs for p in PAIRS))
    for pair in PAIRS:
        for name in pair.jobs:
            job = repo.get_job(name)
            assert job.tags["connector/integration"] == pair.name, name
            assert job.executor_def.name == "in_process", name  # I/O-bound: one process per run (rule 5)
            # one retry budget: ours (ledger, inbox); Dagster re-launches only runs whose worker died
            assert job.tags["dagster/retry_on_asset_or_op_failure"] == "false", name
        for name in ({f"{pair.name}__notification_job", f"{pair.name}__resolution_job"} & pair.jobs):
            assert repo.get_job(name).tags["dagster/max_retries"] == "0", name  # the inbox retries these


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_poll_job_materializes_the_entities_and_reconcile_job_runs_only_the_checks(defs, repo, pair):
    jobs = {j.name: j for j in defs.jobs}
    reconcile = jobs[f"{pair.name}__reconcile_job"]
    for name, keys in ((f"{pair.name}__poll_job", pair.polled_keys),
                       (f"{pair.name}__mirror_job", pair.entity_keys - pair.polled_keys)):
        if keys:
            assert jobs[name].selection.resolve(repo.asset_graph) == keys
            # a poll or mirror run must not also run full reconciliations against both live systems; it
            # evaluates the ledger's cheap check, so the asset's checks are evaluated with each materialization
            assert jobs[name].selection.resolve_checks(repo.asset_graph) == {
                dg.AssetCheckKey(k, NEEDS_A_PERSON) for k in keys}
        else:
            assert name not in jobs
    assert reconcile.selection.resolve(repo.asset_graph) == set()
    assert reconcile.selection.resolve_checks(repo.asset_graph) == (
        {dg.AssetCheckKey(k, CHECK_NAME) for k in pair.entity_keys}
        | {dg.AssetCheckKey(k, NEEDS_A_PERSON) for k in pair.entity_keys}
        | {dg.AssetCheckKey(k, DEAD_LETTERS) for k in pair.backlog_keys})
    if pair.polled_keys:
        assert isinstance(repo.get_job(f"{pair.name}__poll_job").partitions_def, dg.TimeWindowPartitionsDefinition)
    if pair.mirrors:
        assert isinstance(repo.get_job(f"{pair.name}__mirror_job").partitions_def, dg.StaticPartitionsDefinition)


def test_sensors_by_name_target_and_default_status(repo):
    sensors = {s.name: s for s in repo.sensor_defs}
    expected = {k: v for p in PAIRS for k, v in p.sensor_jobs.items()}
    watchdog = sensors.pop("connector__run_watchdog")
    assert watchdog.default_status == dg.DefaultSensorStatus.RUNNING and not watchdog.targets
    assert watchdog.required_resource_keys == {"connector_store"}
    assert set(sensors) == set(expected)
    for name, job in expected.items():
        assert sensors[name].job_name == job
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING, name
        assert sensors[name].required_resource_keys == {"connector_store"}, name  # no vendor resource in a tick


def test_schedules_by_name_target_and_default_status(repo):
    schedules = {s.name: s for s in repo.schedule_defs}
    expected = {k: v for p in PAIRS for k, v in p.schedule_jobs.items()}
    assert set(schedules) == set(expected)
    for name, job in expected.items():
        assert schedules[name].job_name == job
        assert schedules[name].default_status == dg.DefaultScheduleStatus.RUNNING, name
    assert schedules["bc_jira__poll_schedule"].cron_schedule == "*/15 * * * *"
    assert schedules["bc_jira__poll_schedule"].execution_timezone == "UTC"
    # F&O is pushed (business events): no poll schedule, no subscription to renew; each hour's window is closed
    assert "d365_jira__poll_schedule" not in schedules and "d365_jira__subscription_renewal_schedule" not in schedules
    assert schedules["d365_jira__window_close_schedule"].cron_schedule == "5 * * * *"
    # Acumatica is polled (push notifications only accelerate it, configured in Acumatica: nothing to renew)
    assert schedules["acumatica_jira__poll_schedule"].cron_schedule == "*/15 * * * *"
    assert "acumatica_jira__subscription_renewal_schedule" not in schedules


@pytest.mark.parametrize(("pair", "entity"), ENTITIES, ids=[f"{p.name}-{e}" for p, e in ENTITIES])
def test_entity_assets_are_described_owned_and_hourly_from_go_live(repo, pair, entity):
    node = repo.asset_graph.get(dg.AssetKey([pair.source, entity]))
    # no asset RetryPolicy: it would multiply with our own budgets (finding: 9 attempts of a permanent 4xx)
    assert repo.assets_defs_by_key[node.key].op.retry_policy is None
    assert node.group_name == pair.name
    assert node.kinds == {pair.source, pair.target}
    assert node.owners == [pair.owner]
    assert node.description and node.description.strip()
    assert node.is_materializable
    partitions = node.partitions_def
    if entity in pair.mirrors:   # a mirror no event announces: one partition per legal entity
        assert isinstance(partitions, dg.StaticPartitionsDefinition)
        assert partitions.get_partition_keys() == ["usmf"]
        return
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    assert partitions.cron_schedule == "0 * * * *"  # hourly
    assert partitions.timezone == "UTC"
    assert partitions.start == GO_LIVE
    assert partitions.get_first_partition_key() == "2026-11-01-00:00"


@pytest.mark.parametrize("source", [*SOURCES, "jira", "monday"])
def test_inbox_assets_are_external_and_described(repo, source):
    node = repo.asset_graph.get(dg.AssetKey(["inbox", source]))
    assert node.group_name == "inboxes"
    assert node.kinds == {source}
    assert node.description and node.description.strip()
    assert node.is_external and not node.is_materializable
    assert node.partitions_def is None


@pytest.mark.parametrize("source", [*SOURCES, "jira"])
def test_inbox_assets_have_an_owner(repo, source):
    assert repo.asset_graph.get(dg.AssetKey(["inbox", source])).owners


def test_resources_are_bound_once_under_their_system_names(defs):
    assert set(defs.resources) == {"connector_store", *SOURCES, "jira", "monday"}


def test_dagster_cli_validates_the_workspace(tmp_path):
    """DAGSTER-STYLE rule 12: the CLI is pointed at workspace.yaml explicitly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env["DAGSTER_HOME"] = str(tmp_path)
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Validation successful for code location connector_pipelines" in proc.stdout + proc.stderr
