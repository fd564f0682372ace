"""IntegrationPairComponent: one ``defs/<pair>/defs.yaml`` becomes every Dagster definition of a pair.

For each entity of the definition:
- a time-window partitioned asset ``[source, entity]`` (hourly windows on lastModifiedDateTime from
  go-live) that syncs the window's exceptions to Jira — finance ops re-run a failed window from the UI;
- an asset check ``every_exception_has_one_open_issue`` (reconciliation against the live systems, each finding
  named in business words with its ERP and target links);
- an asset check ``no_record_needs_a_person`` (the ledger's records and resolutions that wait for a person,
  evaluated with every poll or mirror materialization; components.record_views).
For the pair:
- ``<pair>__poll_job`` + ``<pair>__poll_schedule`` (current and previous window); for a source without a
  modified timestamp (F&O: windows = events received in an hour) ``<pair>__window_close_schedule`` replays
  each hour once it has ended;
- a notification batch records, per announced set and hour it received deliveries in, a materialization of
  that window (event-driven sets whose records are all settled) or an observation (records waiting for a
  retry or a person; polled sets, whose polls materialize them) — ``covered_windows``;
- ``<pair>__notification_job`` + ``<pair>__<source>_inbox_sensor`` (one run per inbox batch);
- ``<pair>__resolution_job`` + ``<pair>__jira_inbox_sensor`` (Jira done -> act on the source; the outcomes
  are observed on the entity's asset);
- ``<pair>__retry_job`` + ``<pair>__ledger_retry_sensor`` (records whose automatic retry is due);
- ``<pair>__repair_job`` + schedule (open missing issues, close newer duplicates);
- ``<pair>__redrive_job`` (Launchpad: the records that need a person, written again once their cause is fixed);
- ``<pair>__subscription_renewal_job`` / ``<pair>__jira_webhook_renewal_job`` and their schedules;
- ``<pair>__reconcile_job`` + schedule running the checks, including ``no_dead_letters`` on the pair's
  inbox backlog assets ``[<pair>, inbox, <source>]``.
In the lineage the receiver's inbox ``[inbox, <source>]`` feeds the pair's backlog and each entity its
deliveries announce. Every job carries the pair's ``connector/*`` run tags, and a run of the assets
launched from the UI gets them from its steps (components.run_tags).

Failures (core.failures): ops raise ``Failure(allow_retries=False)`` and jobs carry
``dagster/retry_on_asset_or_op_failure=false``: the ledger and the inbox own the retry budget. Inbox
jobs also carry ``dagster/max_retries=0``: when their worker dies the inbox sensor retries the batch.
"""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from connector_pipelines.components.inbox_sensor import (
    InboxBatchConfig,
    build_inbox_sensor,
    dead_letter_check,
    inbox_asset_key,
    inbox_backlog_spec,
    reader_name,
)
from connector_pipelines.components.record_views import (
    NEEDS_A_PERSON,
    asset_key_of,
    needs_a_person_check,
    needs_a_person_evaluation,
    redrive_job,
    resolution_observations,
)
from connector_pipelines.components.run_tags import pair_tags, tag_run_of_pair
from connector_pipelines.core.failures import RetryBudget, describe, is_transient
from connector_pipelines.core.inbox import InboxRow
from connector_pipelines.core.memory import batch_heap
from connector_pipelines.integrations import registry
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.documents import Finding, findings_markdown, sentence
from connector_pipelines.integrations.sync import (
    SyncReport,
    findings,
    reconcile,
    repair,
    retry_records,
    sync_all,
    sync_notified,
    sync_window,
)
from connector_pipelines.integrations.target import RecordWriter, WriteReport

MAX_LINKS_IN_METADATA = 25
# Our budgets (ledger, inbox) retry failed work; Dagster re-launches only runs whose worker died.
NO_STEP_RETRY_TAGS = {"dagster/retry_on_asset_or_op_failure": "false"}
INBOX_JOB_TAGS = {**NO_STEP_RETRY_TAGS, "dagster/max_retries": "0"}

__all__ = ["InboxBatchConfig", "IntegrationPairComponent", "build_inbox_sensor", "build_integration_defs",
           "inbox_sources"]


# ------------------------------------------------------------------------------------------------
# runtime helpers: resources -> adapters
# ------------------------------------------------------------------------------------------------
def make_source(integration: IntegrationDefinition, resources: Any):
    """The source adapter from the registry (integrations.registry); an unknown source fails the step."""
    try:
        return registry.make_source(integration, resources)
    except registry.UnknownSystem as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc


def make_writer(integration: IntegrationDefinition, resources: Any, run_id: str) -> RecordWriter:
    """The target writer from the registry (integrations.registry), for this run."""
    try:
        return registry.make_target(integration, resources, run_id)
    except registry.UnknownSystem as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc


def resource_keys_for(integration: IntegrationDefinition) -> set[str]:
    """The store plus the source's and the target's resources (the registry names them)."""
    return {"connector_store", integration.capabilities.resource_key, integration.target_system.resource_key}


def _log_quarantined(log, report: SyncReport) -> None:
    for key, reason in list(report.quarantined.items())[:MAX_LINKS_IN_METADATA]:
        log.warning(f"quarantined {key}: {reason}")
    if len(report.quarantined) > MAX_LINKS_IN_METADATA:
        log.warning(f"… and {len(report.quarantined) - MAX_LINKS_IN_METADATA} more quarantined (see the ledger)")
    for reason in report.ignored_reasons[:10]:
        log.info(f"ignored notification: {reason}")


def _md_list(items: dict[str, Any]) -> dg.MetadataValue:
    lines = [f"- `{k}`: {v}" for k, v in list(items.items())[:MAX_LINKS_IN_METADATA]]
    if len(items) > MAX_LINKS_IN_METADATA:
        lines.append(f"- … and {len(items) - MAX_LINKS_IN_METADATA} more (see the ledger)")
    return dg.MetadataValue.md("\n".join(lines))


def report_metadata(counts: dict[str, int], write: WriteReport, calls: dict[str, int],
                    quarantined: dict[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {k: dg.MetadataValue.int(v) for k, v in counts.items()}
    if quarantined:
        md["quarantined_records"] = _md_list(quarantined)
    md.update({f"api_calls_{k}": dg.MetadataValue.int(v) for k, v in calls.items()})
    if write.links:
        rows = list(write.links.items())[:MAX_LINKS_IN_METADATA]
        table = "| source key | Jira issue |\n|---|---|\n" + "\n".join(
            f"| `{k}` | [{u.rsplit('/', 1)[-1]}]({u}) |" for k, u in rows)
        if len(write.links) > MAX_LINKS_IN_METADATA:
            table += f"\n\n… and {len(write.links) - MAX_LINKS_IN_METADATA} more (see the ledger)"
        md["issues"] = dg.MetadataValue.md(table)
        md["first_issue"] = dg.MetadataValue.url(rows[0][1])
    if write.failures:
        md["failures"] = _md_list({k: v + (f" (retried automatically after {write.retry_at[k].isoformat()}Z)"
                                           if k in write.retry_at else " (needs a person)")
                                   for k, v in write.failures.items()})
    if write.deferred:
        md["deferred_search_lag"] = _md_list({k: f"an earlier create may exist; verified after {t.isoformat()}Z"
                                              for k, t in write.deferred.items()})
    if write.left_to_others:
        md["left_to_other_run"] = _md_list(write.left_to_others)
    return md


def _evaluate_ledger_checks(context: dg.OpExecutionContext, integration: IntegrationDefinition, ledger,
                            reports: dict[str, SyncReport]) -> None:
    """A run that changed a set's records outside an asset run (a webhook batch, a retry) evaluates the set's
    ``no_record_needs_a_person`` check too, so the asset page is current, not "Not evaluated"."""
    for entity_name in sorted(reports):
        context.log_event(needs_a_person_evaluation(integration, integration.entity(entity_name), ledger,
                                                    context.instance))


def _report_check_before_failing(context: dg.AssetExecutionContext, integration: IntegrationDefinition,
                                 entity: EntitySync) -> None:
    """The asset step is about to fail: its check step will be skipped, and events an op logs before raising
    are dropped with it. The check's result is recorded on the instance at once instead, so the asset page
    says which records need a person and why, not only "Execution failed"."""
    context.instance.report_runless_asset_event(needs_a_person_evaluation(
        integration, entity, context.resources.connector_store.ledger(), context.instance))


def _fail_if_a_person_is_needed(what: str, needs: dict[str, str], md: dict[str, Any]) -> None:
    """Transient failures are retried by the ledger retry sensor (the run stays green, the metadata says
    when); a permanent one fails the step — without a Dagster retry, which would only repeat it."""
    if needs:
        raise dg.Failure(description=(
            f"{len(needs)} record(s) could not be written ({what}) and need a person: the ledger lists them "
            "with their errors (`connector-pipelines ledger`); re-executing this run or re-materializing the "
            "partition after the fix retries exactly those."), metadata=md, allow_retries=False)


def _batch_failed(dispatch, rows: list[InboxRow], run_id: str, exc: BaseException, what: str) -> None:
    """A batch that could not complete: its rows are due again (transient) or dead letters (permanent)."""
    budget = RetryBudget.from_env()
    transient = is_transient(exc)
    due = dispatch.failed([r.id for r in rows], run_id, f"{what}: {describe(exc)}",
                          budget.next_from_now if transient else None)
    when = sorted(t for t in due.values() if t)
    retry = f"retried after {when[0].isoformat()}Z" if when else "parked as dead letter(s) for a person"
    raise dg.Failure(description=f"{what} failed ({'transient' if transient else 'permanent'}): {describe(exc)}; "
                                 f"{len(rows)} inbox row(s) {retry}.", allow_retries=False) from exc


def inbox_sources(integration: IntegrationDefinition) -> list[tuple[str, str]]:
    """The inboxes a pair reads, as (system, label): its source's, and its target's when a person's change
    there acts back on the source (the target adapter has a resolution processor)."""
    src = [(integration.source, integration.capabilities.label)]
    if hasattr(registry.target_module(integration.target.system), "resolution_processor"):
        return [*src, (integration.target.system, integration.target_system.label)]
    return src


def announced(entity: EntitySync) -> bool:
    """The source's own deliveries announce the set's records (a BC subscription, an F&O business event, an
    Acumatica push notification): the source's inbox feeds its asset (an edge in the lineage)."""
    return entity.webhook or entity.business_event is not None or entity.push_query is not None


def covered_windows(integration: IntegrationDefinition, source: Any, rows: list[InboxRow],
                    partitions: dg.TimeWindowPartitionsDefinition, total: SyncReport,
                    ) -> list[dg.AssetMaterialization | dg.AssetObservation]:
    """What a batch of deliveries did to each entity's hourly windows (the hour each delivery was received),
    so an asset's partitions show the work webhook runs did (issue 13):
    - an event-driven set (its window = the events received in that hour): the window is *materialized* when
      every record the batch brought for it is settled (written, unchanged, or no longer an exception);
    - a window holding a record that needs a person, or one still due for an automatic retry, gets an
      *observation* saying so instead — it stays as it was, and the hourly window close re-runs it, which
      fails (red in the UI) while the record still cannot be written, and turns green once it can;
    - a polled set (its window = records changed in that hour, which polling reads) is only observed: a
      webhook batch does not prove the window complete.
    Mirrors (one partition per legal entity, read in full) are left to their own runs."""
    unsettled = set(total.write.failures) | set(total.quarantined) | set(total.write.deferred)
    by_hour: dict[str, list[InboxRow]] = {}
    for row in rows:
        received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
        if received < partitions.start:
            continue                       # received before go-live: no window holds it
        by_hour.setdefault(partitions.get_partition_key_for_timestamp(received.timestamp()), []).append(row)
    polled = integration.capabilities.windowed_polling
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    entities = [e for e in integration.entities if not e.mirror and announced(e)]
    for key, group in sorted(by_hour.items()):
        changes = source.changes_from_notifications(entities, [r.payload for r in group])
        for entity in entities:
            ids = changes.ids.get(entity.name, set())
            if not ids:
                continue
            waiting = sorted(k for k in (source.external_id(entity, i) for i in ids) if k in unsettled)
            md: dict[str, Any] = {"deliveries": dg.MetadataValue.int(len(group)),
                                  "records": dg.MetadataValue.int(len(ids)),
                                  "by": dg.MetadataValue.text(f"{integration.capabilities.label} webhook batch")}
            asset_key = asset_key_of(integration, entity)
            if waiting:
                md["not_settled"] = dg.MetadataValue.int(len(waiting))
                md["not_settled_records"] = _md_list({k: total.write.failures.get(k)
                                                      or total.quarantined.get(k) or "deferred (search lag)"
                                                      for k in waiting[:MAX_LINKS_IN_METADATA]})
                events.append(dg.AssetObservation(asset_key=asset_key, partition=key, metadata=md,
                                                  description="records of this window wait for a retry or a "
                                                              "person; the window close re-runs it"))
            elif polled:
                events.append(dg.AssetObservation(asset_key=asset_key, partition=key, metadata=md,
                                                  description="records brought by webhooks; the window's poll "
                                                              "materializes it"))
            else:
                events.append(dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata=md,
                                                      description="every event of this batch received in the "
                                                                  "window is settled"))
    return events


# ------------------------------------------------------------------------------------------------
# the factory
# ------------------------------------------------------------------------------------------------
def build_integration_defs(integration: IntegrationDefinition) -> dg.Definitions:
    name = integration.name
    src, tgt = integration.source, integration.target.system
    resource_keys = resource_keys_for(integration)
    tags = pair_tags(name, src, tgt)   # on every job; steps of Dagster's implicit asset job add them (run_tags)
    partitions = dg.HourlyPartitionsDefinition(start_date=integration.polling.first_window(),
                                               timezone=integration.polling.timezone, end_offset=1)
    owners = integration.owners or None

    # The return flow (a change in the target acts back on the source) and the target's webhook upkeep are
    # what the target's adapter offers (Jira: Done -> resolution, its dynamic webhook).
    target = registry.target_module(tgt)
    returns = hasattr(target, "resolution_processor")
    # Mirrors are read in full on a schedule (and from the UI): one static partition per legal entity; events,
    # where they announce a mirror's records, still bring them promptly through the notification job.
    mirror_partitions = dg.StaticPartitionsDefinition([integration.company])
    assets = [_entity_asset(integration, e, mirror_partitions if e.mirror else partitions, resource_keys, owners,
                            tags) for e in integration.entities]
    asset_keys = [a.key for a in assets]
    polled_keys = [a.key for a, e in zip(assets, integration.entities, strict=True) if not e.mirror]
    mirror_keys = [a.key for a, e in zip(assets, integration.entities, strict=True) if e.mirror]
    inboxes = inbox_sources(integration)
    backlogs = [inbox_backlog_spec(name, s, label, owners) for s, label in inboxes]
    checks = [_reconcile_check(integration, e, resource_keys, tags) for e in integration.entities]
    checks += [dead_letter_check(name, s, tags) for s, _ in inboxes]
    checks += [needs_a_person_check(integration, e, tags) for e in integration.entities]

    # without_checks(): AssetSelection.assets() also selects the assets' checks, which would run a full
    # reconciliation against both live systems in every poll run; the reconcile job runs them instead. The
    # ledger's cheap no_record_needs_a_person is evaluated with every materialization (record_views).
    def with_ledger_check(keys: list[dg.AssetKey]) -> dg.AssetSelection:
        return (dg.AssetSelection.assets(*keys).without_checks()
                | dg.AssetSelection.checks(*(dg.AssetCheckKey(k, NEEDS_A_PERSON) for k in keys)))

    poll_job = dg.define_asset_job(f"{name}__poll_job",
                                   selection=with_ledger_check(polled_keys),
                                   tags={**tags, **NO_STEP_RETRY_TAGS, "connector/trigger": "poll"},
                                   description=f"Poll {src} windows for exceptions and sync them to "
                                               f"{integration.target_system.label}.")
    reconcile_job = dg.define_asset_job(
        f"{name}__reconcile_job",
        selection=dg.AssetSelection.checks_for_assets(*asset_keys, *(b.key for b in backlogs)),
        tags={**tags, **NO_STEP_RETRY_TAGS, "connector/trigger": "reconcile"},
        description=f"Reconcile every current exception against the open {integration.target_system.label} records; "
                    "list dead letters.")
    notification_job = _notification_job(integration, resource_keys, tags, partitions)
    retry_job = _retry_job(integration, resource_keys, tags)
    repair_job = _repair_job(integration, resource_keys, tags)
    # A pair whose sets are all mirrors has no time windows to poll or replay: its mirror job reads them.
    jobs = [*([poll_job] if polled_keys else []), reconcile_job, notification_job, retry_job, repair_job,
            redrive_job(integration, resource_keys, {**tags, **NO_STEP_RETRY_TAGS})]
    capabilities = integration.capabilities
    mirror_job = None
    if mirror_keys:
        mirror_job = dg.define_asset_job(
            f"{name}__mirror_job", selection=with_ledger_check(mirror_keys),
            partitions_def=mirror_partitions, tags={**tags, **NO_STEP_RETRY_TAGS, "connector/trigger": "mirror"},
            description=f"Read every record of the mirrored sets in full and keep one "
                        f"{integration.target_system.label} record each.")
        jobs.append(mirror_job)
    if returns:
        resolution_job = _resolution_job(integration, resource_keys, tags)
        jobs.insert(3, resolution_job)
    if hasattr(target, "ensure_webhook"):
        webhook_job = _target_webhook_renewal_job(integration, resource_keys, tags)
        jobs.append(webhook_job)

    src_label, tgt_label = capabilities.label, integration.target_system.label
    schedules = [
        dg.ScheduleDefinition(name=f"{name}__reconcile_schedule", job=reconcile_job, cron_schedule="7 * * * *",
                              execution_timezone=integration.polling.timezone,
                              default_status=dg.DefaultScheduleStatus.RUNNING,
                              description=f"Every hour: check that each current {src_label} exception"
                                          f"{' (each record of a mirrored set)' if mirror_keys else ''} has exactly "
                                          f"one open {tgt_label} record (missing, duplicate and stale ones fail the check) "
                                          "and that no delivery is parked as a dead letter."),
        dg.ScheduleDefinition(name=f"{name}__repair_schedule", job=repair_job, cron_schedule="37 * * * *",
                              execution_timezone=integration.polling.timezone,
                              default_status=dg.DefaultScheduleStatus.RUNNING,
                              description=f"Every hour, half an hour after the reconcile: open the {tgt_label} records "
                                          "found missing and close newer duplicates as duplicates of the oldest."),
    ]
    if hasattr(target, "ensure_webhook"):
        schedules.append(dg.ScheduleDefinition(
            name=f"{name}__{tgt}_webhook_renewal_schedule", job=webhook_job, cron_schedule="27 3 * * *",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Every night: register the {tgt_label} webhook if it is missing and refresh it before it "
                        f"expires, so what people do in {tgt_label} keeps reaching {src_label}."))
    if capabilities.windowed_polling and polled_keys:
        schedules.insert(0, _poll_schedule(integration, poll_job, partitions))
    elif polled_keys:
        # Sources without a modified timestamp (F&O) are pushed only: their windows replay the inbox. Each hour,
        # once its events are in, the window is closed: replayed once more, so it is green when all its records
        # are settled and red (a failed run) while one still needs a person.
        schedules.insert(0, _window_close_schedule(integration, poll_job, partitions))
    if mirror_job is not None:
        schedules.append(dg.build_schedule_from_partitioned_job(
            mirror_job, name=f"{name}__mirror_schedule", cron_schedule="15 2 * * *",
            execution_timezone=integration.polling.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Every night, the full read of each mirrored set per legal entity."))
    if capabilities.subscriptions:
        subscription_job = _subscription_renewal_job(integration, resource_keys, tags)
        jobs.append(subscription_job)
        schedules.append(dg.ScheduleDefinition(
            name=f"{name}__subscription_renewal_schedule", job=subscription_job, cron_schedule="17 */6 * * *",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Every six hours: create missing {src_label} webhook subscriptions and renew those close to "
                        "expiry, so changed documents keep being announced within seconds (polling still catches "
                        "up)."))
    sensors = [
        build_inbox_sensor(f"{name}__{src}_inbox_sensor", name, src, notification_job, tags,
                           description=f"Each batch of {src_label} webhook deliveries becomes one {name} run that "
                                       f"reads the documents they announce and opens or updates their {tgt_label} "
                                       "records; batches that failed, or whose run died, are retried."),
        _ledger_retry_sensor(integration, retry_job, tags),
    ]
    if returns:
        sensors.insert(1, build_inbox_sensor(
            f"{name}__{tgt}_inbox_sensor", name, tgt, resolution_job, tags,
            row_filter=target.inbox_row_filter(integration),
            description=f"Launch one {name} resolution run per batch of {integration.target_system.label} "
                        f"events that can resolve a record ({target.RESOLUTION_EVENTS})."))
    return dg.Definitions(assets=[*assets, *backlogs], asset_checks=checks, schedules=schedules, sensors=sensors,
                          jobs=jobs)


def _entity_asset(integration: IntegrationDefinition, entity: EntitySync, partitions, resource_keys, owners,
                  tags: dict[str, str]):
    key = asset_key_of(integration, entity)
    target_label = integration.target_system.label
    if entity.mirror:
        window_text = (f"One partition = the legal entity; materializing it reads every {entity.entity_set} record "
                       f"and keeps one {target_label} record each (unchanged ones cost no {target_label} call)"
                       + (f"; {entity.business_event} brings each one promptly." if entity.business_event else "."))
    elif integration.capabilities.windowed_polling:
        window_text = (f"One partition = the {entity.entity_set} changed in one hour (lastModifiedDateTime); "
                       f"materializing it opens or updates one {target_label} record per exception.")
    else:
        window_text = (f"Announced by {entity.business_event}. One partition = the business events received in "
                       f"one hour; materializing it re-reads their {entity.entity_set} over OData and opens or "
                       "updates one Jira issue per exception (done ones are skipped by the ledger).")

    # An entity whose records link to another's target records (relates_to) comes after it: in a mirror run the
    # vendors' items exist before the invoices that link to them are written. An entity the source's deliveries
    # announce is fed by the source's inbox (the notification runs; an event-only window replays it).
    deps = sorted({dg.AssetKey([integration.source, f.relates_to]) for f in entity.fields if f.relates_to}
                  | ({inbox_asset_key(integration.source)} if announced(entity) else set()),
                  key=lambda k: k.to_user_string())

    @dg.asset(
        key=key,
        deps=deps,
        partitions_def=partitions,
        group_name=integration.name,
        kinds={integration.source, integration.target.system},
        owners=owners,
        pool=integration.target_system.pool,
        required_resource_keys=resource_keys,
        description=f"{entity.description} {window_text}",
        tags={"connector/entity": entity.name},
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        tag_run_of_pair(context.instance, context.run_id, tags)
        source = make_source(integration, context.resources)
        writer = make_writer(integration, context.resources, context.run_id)
        before = (source.api_calls(), writer.api_calls())
        if entity.mirror:
            report = sync_all(source, writer, entity)
            _log_quarantined(context.log, report)
            calls = {integration.source: source.api_calls() - before[0],
                     integration.target.system: writer.api_calls() - before[1]}
            md = report_metadata(report.counts(), report.write, calls, report.quarantined)
            md["legal_entity"] = dg.MetadataValue.text(context.partition_key)
            context.log.info(f"{entity.name} mirror of {context.partition_key}: {report.counts()}")
            if report.needs_a_person:
                _report_check_before_failing(context, integration, entity)
            _fail_if_a_person_is_needed(f"{entity.name} mirror", report.needs_a_person, md)
            return dg.MaterializeResult(metadata=md)
        window = context.partition_time_window
        start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
        if integration.capabilities.windowed_polling:
            report = sync_window(source, writer, entity, start, end)
        else:
            rows = context.resources.connector_store.inbox().received_between(integration.source, start, end)
            report = SyncReport()
            for rep in sync_notified(integration, source, writer, [r.payload for r in rows], [entity]).values():
                report.merge(rep)
        _log_quarantined(context.log, report)
        calls = {integration.source: source.api_calls() - before[0],
                 integration.target.system: writer.api_calls() - before[1]}
        md = report_metadata(report.counts(), report.write, calls, report.quarantined)
        md["window"] = dg.MetadataValue.text(f"{window.start.isoformat()} .. {window.end.isoformat()}")
        context.log.info(f"{entity.name} {md['window'].text}: {report.counts()}")
        # A window is complete only when every record in it is settled: one announced but not readable at the
        # source is quarantined for a person, and fails the window too (red until it is fixed and re-run).
        needs = {**report.quarantined, **report.needs_a_person}
        if needs:
            _report_check_before_failing(context, integration, entity)
        _fail_if_a_person_is_needed(f"{entity.name} window", needs, md)
        return dg.MaterializeResult(metadata=md)

    return _asset


def _reconcile_check(integration: IntegrationDefinition, entity: EntitySync, resource_keys, tags: dict[str, str]):
    key = asset_key_of(integration, entity)

    @dg.asset_check(asset=key, name="every_exception_has_one_open_issue", required_resource_keys=resource_keys,
                    description="Every current exception in the source has exactly one open Jira issue "
                                "(missing, duplicate and stale issues fail; orphaned ones are listed). For entities "
                                "announced only by events, every document the catch-up read finds has an issue.",
                    blocking=False)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        tag_run_of_pair(context.instance, context.op_execution_context.run_id, tags)
        source = make_source(integration, context.resources)
        store = context.resources.connector_store
        writer = make_writer(integration, context.resources, context.op_execution_context.run_id)
        ledger = store.ledger()
        r = reconcile(integration, source, writer.backend, entity, ledger,
                      settle_s=store.write_settings().reconcile_settle_s)
        md: dict[str, Any] = {
            "current_exceptions": dg.MetadataValue.int(r.exceptions),
            "open_issues": dg.MetadataValue.int(r.open_issues),
            "missing": dg.MetadataValue.int(len(r.missing)),
            "duplicates": dg.MetadataValue.int(len(r.duplicates)),
            "stale_done_in_jira": dg.MetadataValue.int(len(r.stale)),
            "orphaned": dg.MetadataValue.int(len(r.orphaned)),
            "in_flight": dg.MetadataValue.int(len(r.in_flight)),
        }
        md.update(_findings_metadata(integration, findings(integration, writer.backend, entity, r, ledger)))
        if r.unverifiable:
            md["cannot_verify"] = dg.MetadataValue.text(f"completeness cannot be verified: {r.unverifiable}")
        if not r.passed:
            md["details"] = dg.MetadataValue.json({"missing": r.missing[:50], "duplicates": r.duplicates,
                                                   "stale": r.stale, "orphaned": r.orphaned})
        # Only "cannot verify" (nothing wrong was found) is a warning; anything found wrong is an error.
        only_unverifiable = not (r.missing or r.duplicates or r.stale)
        severity = dg.AssetCheckSeverity.WARN if only_unverifiable else dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckResult(passed=r.passed, metadata=md, severity=severity,
                                   description=md["summary"].value if "summary" in md else None)

    return _check


def _findings_metadata(integration: IntegrationDefinition, found: list[Finding]) -> dict[str, Any]:
    """A reconciliation's findings shown directly on the check: a table naming each document in business words
    with its ERP and target links (problems first, then changes in flight), the first problem in one line
    with both links, and a one-line summary (the check's description)."""
    if not found:
        return {}
    problems = [f for f in found if f.problem != "in flight"]
    ordered = problems + [f for f in found if f.problem == "in flight"]
    md: dict[str, Any] = {"documents": dg.MetadataValue.md(findings_markdown(
        ordered, integration.capabilities.label, integration.target_system.label))}
    if problems:
        first = problems[0]
        md["summary"] = dg.MetadataValue.text(sentence(problems))
        md["first_problem"] = dg.MetadataValue.text(f"{first.problem}: {first.document.words} — {first.detail}")
        if first.document.url:
            md["first_problem_erp_record"] = dg.MetadataValue.url(first.document.url)
        if first.targets:
            md["first_problem_target_record"] = dg.MetadataValue.url(first.targets[0][1])
    return md


def _single_op_job(op_def: dg.OpDefinition, name: str, tags: dict[str, str], trigger: str,
                   description: str, extra_tags: dict[str, str] | None = None) -> dg.JobDefinition:
    """The one-op job every sensor/schedule here launches: pair tags plus its trigger, in-process."""

    @dg.job(name=name, tags={**tags, **NO_STEP_RETRY_TAGS, **(extra_tags or {}), "connector/trigger": trigger},
            executor_def=dg.in_process_executor, description=description)
    def _job():
        op_def()

    return _job


def _notification_job(integration: IntegrationDefinition, resource_keys, tags,
                      partitions: dg.TimeWindowPartitionsDefinition) -> dg.JobDefinition:
    name = integration.name
    reader = reader_name(name, integration.source)

    @dg.op(name=f"{name}__sync_notified_records", required_resource_keys=resource_keys,
           pool=integration.target_system.pool,
           description="Read the full records the notifications name, then open or update their Jira issues.")
    def sync_notified_records(context: dg.OpExecutionContext, config: InboxBatchConfig) -> dg.Output[None]:
        store = context.resources.connector_store
        inbox = store.inbox()
        dispatch = inbox.dispatch(reader)
        rows = inbox.get(config.inbox_ids)
        try:
            source = make_source(integration, context.resources)
            writer = make_writer(integration, context.resources, context.run_id)
            before = (source.api_calls(), writer.api_calls())
            with batch_heap():   # the collector scans the batch's objects, not Dagster's (core/memory.py)
                reports = sync_notified(integration, source, writer, [r.payload for r in rows])
        except dg.Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever stopped the batch, its rows are retried or parked
            _batch_failed(dispatch, rows, context.run_id, exc, f"{integration.source} notification batch")
        total = SyncReport()
        for entity_name, rep in reports.items():
            context.log.info(f"{entity_name}: {rep.counts()}")
            total.merge(rep)
        _log_quarantined(context.log, total)
        calls = {integration.source: source.api_calls() - before[0],
                 integration.target.system: writer.api_calls() - before[1]}
        md = report_metadata({"notifications": len(rows), **total.counts()}, total.write, calls, total.quarantined)
        # Every announced record is now in the ledger (done, due for retry, deferred or needing a person):
        # the deliveries themselves are processed.
        dispatch.processed([r.id for r in rows], context.run_id)
        for event in covered_windows(integration, source, rows, partitions, total):
            context.log_event(event)
        _evaluate_ledger_checks(context, integration, store.ledger(), reports)
        _fail_if_a_person_is_needed("notification batch", total.needs_a_person, md)
        return dg.Output(None, metadata=md)

    return _single_op_job(sync_notified_records, f"{name}__notification_job", tags, "webhook",
                          f"One batch of {integration.source} notifications -> Jira issues.", INBOX_JOB_TAGS)


def _resolution_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name = integration.name
    reader = reader_name(name, integration.target.system)

    tgt = integration.target.system
    target = registry.target_module(tgt)
    label = integration.target_system.label

    @dg.op(name=f"{name}__apply_{tgt}_resolutions", required_resource_keys=resource_keys,
           description=f"For records resolved in {label}: confirm it with {label}, check the source document's "
                       "status, then act once.")
    def apply_resolutions(context: dg.OpExecutionContext, config: InboxBatchConfig) -> dg.Output[None]:
        store = context.resources.connector_store
        inbox = store.inbox()
        dispatch = inbox.dispatch(reader)
        rows = inbox.get(config.inbox_ids)
        try:
            source = make_source(integration, context.resources)
            processor = target.resolution_processor(integration, source, context.resources, context.run_id)
            report = processor.process([r.payload.get("event", r.payload) for r in rows])
        except dg.Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever stopped the batch, its rows are retried or parked
            _batch_failed(dispatch, rows, context.run_id, exc, f"{label} resolution batch")
        md: dict[str, Any] = {k: dg.MetadataValue.int(v) for k, v in report.counts().items()}
        md["events"] = dg.MetadataValue.int(len(rows))
        if report.outcomes:
            md["outcomes"] = dg.MetadataValue.md("\n".join(
                f"- [{k}]({processor.browse_url(k)}): {v}" for k, v in list(report.outcomes.items())[:50]))
        if report.refusals:
            md["refused"] = _md_list(report.refusals)
            for issue_key, why in list(report.refusals.items())[:10]:
                context.log.warning(f"refused {issue_key}: {why}")
        if report.failures:
            md["failures"] = _md_list(report.failures)
        context.log.info(f"resolutions: {report.counts()}")
        retry = [rows[i].id for i in report.retry]
        if retry:
            budget = RetryBudget.from_env()
            dispatch.failed(retry, context.run_id, "; ".join(sorted(set(report.retry.values())))[:2000],
                            budget.next_from_now)
        dispatch.processed([r.id for i, r in enumerate(rows) if i not in report.retry], context.run_id)
        # Where finance ops look: each entity's asset records the outcomes (an observation), and its
        # no_record_needs_a_person check lists the resolutions the source refused.
        ledger = store.ledger()
        for event in resolution_observations(integration, ledger, report, processor.browse_url):
            context.log_event(event)
        for entity_name in sorted({e for e, _ in report.about.values()}):
            context.log_event(needs_a_person_evaluation(integration, integration.entity(entity_name), ledger,
                                                        context.instance))
        if report.needs_a_person:
            raise dg.Failure(description=f"{len(report.needs_a_person)} resolution(s) failed permanently; the issues "
                                         "say why and the next Done runs them again.", metadata=md,
                             allow_retries=False)
        return dg.Output(None, metadata=md)

    return _single_op_job(apply_resolutions, f"{name}__resolution_job", tags, f"{tgt}_webhook",
                          f"{label} records resolved by a person act back on the source documents.", INBOX_JOB_TAGS)


class LedgerRetryConfig(dg.Config):
    """The ledger rows a retry run covers: row ids only."""

    ledger_ids: list[int]


def _retry_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name = integration.name

    @dg.op(name=f"{name}__retry_records", required_resource_keys=resource_keys,
           pool=integration.target_system.pool,
           description="Records whose automatic retry is due: re-read them, then write them (or verify an "
                       "earlier create after the search lag) through the normal path.")
    def retry_records_op(context: dg.OpExecutionContext, config: LedgerRetryConfig) -> dg.Output[None]:
        store = context.resources.connector_store
        ledger = store.ledger()
        entries = [e for e in ledger.by_ids(config.ledger_ids) if e.retry_after is not None]
        try:
            source = make_source(integration, context.resources)
            writer = make_writer(integration, context.resources, context.run_id)
            reports = retry_records(integration, source, writer, entries)
        except dg.Failure:
            raise
        except Exception as exc:
            # Nothing was written: each row's next attempt moves on by the budget (or it is given up).
            budget = RetryBudget.from_env()
            ledger.postpone(name, entries, f"retry: {describe(exc)}", context.run_id,
                            budget.next_from_now if is_transient(exc) else None)
            raise dg.Failure(description=f"retry of {len(entries)} record(s) failed: {describe(exc)}",
                             allow_retries=False) from exc
        total = SyncReport()
        for rep in reports.values():
            total.merge(rep)
        md = report_metadata({"records": len(entries), **total.counts()}, total.write, {})
        context.log.info(f"retried {len(entries)} record(s): {total.counts()}")
        _evaluate_ledger_checks(context, integration, ledger, reports)
        _fail_if_a_person_is_needed("retry", total.needs_a_person, md)
        return dg.Output(None, metadata=md)

    return _single_op_job(retry_records_op, f"{name}__retry_job", tags, "retry",
                          "Retry records whose transient failure or deferred create is due.")


def _ledger_retry_sensor(integration: IntegrationDefinition, job: dg.JobDefinition, tags: dict[str, str],
                         batch_size: int = 500, interval_s: int = 30) -> dg.SensorDefinition:
    name = integration.name
    [op_node] = job.graph.nodes

    @dg.sensor(name=f"{name}__ledger_retry_sensor", job=job, minimum_interval_seconds=interval_s,
               required_resource_keys={"connector_store"}, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Records of {name} whose automatic retry is due (a transient failure after its backoff, "
                           "a create deferred past the target's search lag) are written again in one retry run.")
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        due = context.resources.connector_store.ledger().due_for_retry(name, limit=batch_size)
        if not due:
            return dg.SkipReason(f"No {name} record is due for a retry.")
        ident = json.dumps([[e.id, e.attempts, e.retry_after.isoformat() if e.retry_after else None] for e in due])
        run_key = f"{name}:retry:{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
        return dg.SensorResult(run_requests=[dg.RunRequest(
            run_key=run_key, run_config={"ops": {op_node.name: {"config": {"ledger_ids": [e.id for e in due]}}}},
            tags={**tags, "connector/records": str(len(due))})])

    return _sensor


def _repair_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name = integration.name

    @dg.op(name=f"{name}__repair_issues", required_resource_keys=resource_keys,
           pool=integration.target_system.pool,
           description="Open the issues reconciliation finds missing; close each newer duplicate as a duplicate "
                       "of the oldest, with a link.")
    def repair_issues(context: dg.OpExecutionContext) -> dg.Output[None]:
        store = context.resources.connector_store
        source = make_source(integration, context.resources)
        writer = make_writer(integration, context.resources, context.run_id)
        md: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for entity in integration.entities:
            rec = reconcile(integration, source, writer.backend, entity, store.ledger())
            result = repair(integration, source, writer, entity, rec)
            for k, v in result.counts().items():
                md[f"{entity.name}__{k}"] = dg.MetadataValue.int(v)
            if result.closed_duplicates:
                md[f"{entity.name}__closed"] = dg.MetadataValue.md("\n".join(
                    f"- [{d}]({writer.browse_url(d)}) duplicate of [{k}]({writer.browse_url(k)})"
                    for d, k in result.closed_duplicates.items()))
            if result.opened.links:
                md[f"{entity.name}__opened"] = _md_list(result.opened.links)
            failures.update(result.failures)
            failures.update(result.opened.needs_a_person)
            context.log.info(f"{entity.name}: {result.counts()}")
        if failures:
            md["failures"] = _md_list(failures)
            raise dg.Failure(description=f"{len(failures)} repair(s) failed", metadata=md, allow_retries=False)
        return dg.Output(None, metadata=md)

    return _single_op_job(repair_issues, f"{name}__repair_job", tags, "repair",
                          "Open missing issues and close newer duplicates (what the reconcile checks find).")


def _subscription_renewal_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    from connector_pipelines.integrations.webhooks import ensure_bc_subscriptions

    name = integration.name

    @dg.op(name=f"{name}__ensure_source_subscriptions", required_resource_keys=resource_keys,
           description="Create missing source webhook subscriptions and renew those close to expiry.")
    def ensure_source_subscriptions(context: dg.OpExecutionContext) -> dg.Output[None]:
        resources = context.resources
        results = ensure_bc_subscriptions(integration, resources.business_central, resources.connector_store.engine())
        for r in results:
            context.log.info(f"{r['resource']}: {r['action']} (expires {r['expires']})")
        md = {"subscriptions": dg.MetadataValue.json(results),
              "created": dg.MetadataValue.int(sum(r["action"] == "created" for r in results)),
              "renewed": dg.MetadataValue.int(sum(r["action"] == "renewed" for r in results))}
        return dg.Output(None, metadata=md)

    return _single_op_job(ensure_source_subscriptions, f"{name}__subscription_renewal_job", tags, "renewal",
                          f"Keep {integration.source} webhook subscriptions alive (BC: 3-day expiry).")


def _target_webhook_renewal_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name, tgt = integration.name, integration.target.system
    target = registry.target_module(tgt)
    label = integration.target_system.label

    @dg.op(name=f"{name}__ensure_{tgt}_webhook", required_resource_keys=resource_keys,
           description=f"Register the {label} webhook once and refresh it before it expires.")
    def ensure_webhook_op(context: dg.OpExecutionContext) -> dg.Output[None]:
        result = target.ensure_webhook(integration, context.resources)
        context.log.info(f"{label} webhook {result['webhook_id']}: {result['action']} (expires {result['expires']})")
        return dg.Output(None, metadata={"webhook": dg.MetadataValue.json(result)})

    return _single_op_job(ensure_webhook_op, f"{name}__{tgt}_webhook_renewal_job", tags, "renewal",
                          f"Keep the {label} webhook registered and refreshed.")


def _last_partition_key(partitions: dg.PartitionsDefinition, at: datetime) -> str | None:
    # Dagster 1.13 takes the evaluation time from a partition loading context, not a current_time argument.
    with dg.partition_loading_context(effective_dt=at):
        return partitions.get_last_partition_key()


def _poll_schedule(integration: IntegrationDefinition, poll_job, partitions) -> dg.ScheduleDefinition:
    @dg.schedule(name=f"{integration.name}__poll_schedule", job=poll_job,
                 cron_schedule=integration.polling.cron, execution_timezone=integration.polling.timezone,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Poll the current hour's window, and the previous one early in each hour, "
                             "so a lapsed webhook never loses a record.")
    def poll_schedule(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time or datetime.now(UTC)
        current = _last_partition_key(partitions, now)
        keys = [current]
        previous = _last_partition_key(partitions, now - timedelta(hours=1))
        if previous and previous != current and now.minute < 30:
            keys.insert(0, previous)
        for key in keys:
            if key:
                yield dg.RunRequest(run_key=f"{key}@{now.isoformat()}", partition_key=key)

    return poll_schedule


def _window_close_schedule(integration: IntegrationDefinition, window_job, partitions) -> dg.ScheduleDefinition:
    @dg.schedule(name=f"{integration.name}__window_close_schedule", job=window_job, cron_schedule="5 * * * *",
                 execution_timezone=integration.polling.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Every hour, close the hour that just ended: replay the business events received in it "
                             "(records already written cost no target call), so its window turns green when every "
                             "record is settled, or fails — to be re-run from the UI — while one needs a person.")
    def window_close_schedule(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time or datetime.now(UTC)
        key = _last_partition_key(partitions, now - timedelta(hours=1))
        if key:
            yield dg.RunRequest(run_key=f"{key}@close", partition_key=key,
                                tags={"connector/trigger": "window_close"})

    return window_close_schedule


class IntegrationPairComponent(dg.Component, dg.Resolvable, IntegrationDefinition):
    """One integration pair declared in YAML (the attributes are IntegrationDefinition's fields)."""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_integration_defs(IntegrationDefinition.model_validate(self.model_dump()))
