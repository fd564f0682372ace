"""IntegrationPairComponent: one ``defs/<pair>/defs.yaml`` becomes every Dagster definition of a pair.

For each entity of the definition:
- a time-window partitioned asset ``[source, entity]`` (hourly windows on lastModifiedDateTime from
  go-live) that syncs the window's exceptions to Jira — finance ops re-run a failed window from the UI;
- an asset check ``every_exception_has_one_open_issue`` (reconciliation against the live systems).
For the pair:
- ``<pair>__poll_job`` + ``<pair>__poll_schedule`` (current and previous window);
- ``<pair>__notification_job`` + ``<pair>__<source>_inbox_sensor`` (one run per inbox batch);
- ``<pair>__resolution_job`` + ``<pair>__jira_inbox_sensor`` (Jira done -> act on the source);
- ``<pair>__subscription_renewal_job`` / ``<pair>__jira_webhook_renewal_job`` and their schedules;
- ``<pair>__reconcile_job`` + schedule running the checks.
"""


import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from connector_pipelines.core.inbox import InboxRow
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.jira_target import JiraIssueWriter, WriteReport
from connector_pipelines.integrations.resolution import ResolutionProcessor
from connector_pipelines.integrations.sync import SyncReport, reconcile, sync_notified, sync_window

JIRA_SOURCE = "jira"
MAX_LINKS_IN_METADATA = 25
RESOURCE_KEYS = {"connector_store", "jira"}


class InboxBatchConfig(dg.Config):
    """The inbox rows a run covers: ids only, never payloads or secrets."""

    inbox_ids: list[int]


# ------------------------------------------------------------------------------------------------
# runtime helpers: resources -> adapters
# ------------------------------------------------------------------------------------------------
def make_source(integration: IntegrationDefinition, resources: Any):
    if integration.source == "business_central":
        from connector_pipelines.integrations.sources.business_central import BusinessCentralSource

        bc = resources.business_central
        return BusinessCentralSource(bc.client(), integration.company, bc.web_client_url)
    if integration.source == "finance_operations":
        from connector_pipelines.integrations.sources.finance_operations import FinanceOperationsSource

        fo = resources.finance_operations
        return FinanceOperationsSource(fo.client(), integration.company, fo.environment_url)
    raise dg.Failure(f"no source adapter for {integration.source!r}", allow_retries=False)


def make_writer(integration: IntegrationDefinition, resources: Any, run_id: str) -> JiraIssueWriter:
    store = resources.connector_store
    jira = resources.jira.client(store.vault())
    return JiraIssueWriter(jira, store.ledger(), integration, run_id)


def _log_quarantined(log, report: SyncReport) -> None:
    for key, reason in list(report.quarantined.items())[:MAX_LINKS_IN_METADATA]:
        log.warning(f"quarantined {key}: {reason}")
    if len(report.quarantined) > MAX_LINKS_IN_METADATA:
        log.warning(f"… and {len(report.quarantined) - MAX_LINKS_IN_METADATA} more quarantined (see the ledger)")
    for reason in report.ignored_reasons[:10]:
        log.info(f"ignored notification: {reason}")


def report_metadata(counts: dict[str, int], write: WriteReport, calls: dict[str, int],
                    quarantined: dict[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {k: dg.MetadataValue.int(v) for k, v in counts.items()}
    if quarantined:
        md["quarantined_records"] = dg.MetadataValue.md("\n".join(
            f"- `{k}`: {v}" for k, v in list(quarantined.items())[:MAX_LINKS_IN_METADATA]))
    md.update({f"api_calls_{k}": dg.MetadataValue.int(v) for k, v in calls.items()})
    if write.links:
        rows = list(write.links.items())[:MAX_LINKS_IN_METADATA]
        table = "| source key | Jira issue |\n|---|---|\n" + "\n".join(
            f"| `{k}` | [{u.rsplit('/', 1)[-1]}]({u}) |" for k, u in rows)
        if len(write.links) > MAX_LINKS_IN_METADATA:
            table += f"\n\n… and {len(write.links) - MAX_LINKS_IN_METADATA} more (see the ledger)"
        md["issues"] = dg.MetadataValue.md(table)
        first = rows[0][1]
        md["first_issue"] = dg.MetadataValue.url(first)
    if write.failures:
        md["failures"] = dg.MetadataValue.md("\n".join(f"- `{k}`: {v}" for k, v in
                                                       list(write.failures.items())[:MAX_LINKS_IN_METADATA]))
    return md


def _write_errors_text(failed: int, what: str) -> str:
    return (f"{failed} record(s) could not be written ({what}); they are marked failed in the ledger and "
            "re-executing this run (or re-materializing the partition) retries exactly those.")


def _fail_on_write_errors(what: str, report_failed: int, md: dict[str, Any]) -> None:
    if report_failed:
        raise dg.Failure(description=_write_errors_text(report_failed, what), metadata=md)


def _close_inbox_batch(inbox, rows: list[InboxRow], run_id: str, failures: dict[str, str], md: dict[str, Any],
                       describe) -> None:
    """End of an inbox-batch op: rows marked processed, or failed (with the errors) and the op fails,
    so re-executing the run retries exactly the failed records (the ledger skips the rest)."""
    ids = [r.id for r in rows]
    if failures:
        inbox.mark(ids, "failed", run_id, "; ".join(failures.values())[:2000])
        raise dg.Failure(description=describe(len(failures)), metadata=md)
    inbox.mark(ids, "processed", run_id)


# ------------------------------------------------------------------------------------------------
# the factory
# ------------------------------------------------------------------------------------------------
def build_integration_defs(integration: IntegrationDefinition) -> dg.Definitions:
    name = integration.name
    src = integration.source
    resource_keys = RESOURCE_KEYS | {src}
    tags = {"connector/integration": name, "connector/source": src, "connector/target": JIRA_SOURCE}
    partitions = dg.HourlyPartitionsDefinition(start_date=f"{integration.polling.go_live}-00:00",
                                               timezone=integration.polling.timezone, end_offset=1)
    owners = integration.owners or None

    assets = [_entity_asset(integration, e, partitions, resource_keys, owners) for e in integration.entities]
    asset_keys = [a.key for a in assets]
    checks = [_reconcile_check(integration, e, resource_keys) for e in integration.entities]

    # without_checks(): AssetSelection.assets() also selects the assets' checks, which would run a full
    # reconciliation against both live systems in every poll run; the reconcile job runs them instead.
    poll_job = dg.define_asset_job(f"{name}__poll_job",
                                   selection=dg.AssetSelection.assets(*asset_keys).without_checks(),
                                   tags={**tags, "connector/trigger": "poll"},
                                   description=f"Poll {src} windows for exceptions and sync them to Jira.")
    reconcile_job = dg.define_asset_job(f"{name}__reconcile_job",
                                        selection=dg.AssetSelection.checks_for_assets(*asset_keys),
                                        tags={**tags, "connector/trigger": "reconcile"},
                                        description="Reconcile every current exception against the open Jira issues.")
    notification_job = _notification_job(integration, resource_keys, tags)
    resolution_job = _resolution_job(integration, resource_keys, tags)
    jira_webhook_job = _jira_webhook_renewal_job(integration, resource_keys, tags)
    jobs = [poll_job, reconcile_job, notification_job, resolution_job, jira_webhook_job]
    capabilities = integration.capabilities

    schedules = [
        dg.ScheduleDefinition(name=f"{name}__reconcile_schedule", job=reconcile_job, cron_schedule="7 * * * *",
                              execution_timezone=integration.polling.timezone,
                              default_status=dg.DefaultScheduleStatus.RUNNING),
        dg.ScheduleDefinition(name=f"{name}__jira_webhook_renewal_schedule", job=jira_webhook_job,
                              cron_schedule="27 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING),
    ]
    if capabilities.windowed_polling:
        # Sources without a modified timestamp (F&O) are pushed only: their windows replay the inbox on demand.
        schedules.insert(0, _poll_schedule(integration, poll_job, partitions))
    if capabilities.subscriptions:
        subscription_job = _subscription_renewal_job(integration, resource_keys, tags)
        jobs.append(subscription_job)
        schedules.append(dg.ScheduleDefinition(name=f"{name}__subscription_renewal_schedule", job=subscription_job,
                                               cron_schedule="17 */6 * * *",
                                               default_status=dg.DefaultScheduleStatus.RUNNING))
    sensors = [
        build_inbox_sensor(f"{name}__{src}_inbox_sensor", src, notification_job, tags,
                           description=f"Launch one {name} notification run per batch of {src} webhook rows."),
        build_inbox_sensor(f"{name}__jira_inbox_sensor", JIRA_SOURCE, resolution_job, tags,
                           row_filter=_project_filter(integration.project_keys(),
                                                      integration.target.resolution_comment_prefix),
                           description=f"Launch one {name} resolution run per batch of Jira status transitions "
                                       f"(and resolution comments) in {', '.join(integration.project_keys())}."),
    ]
    return dg.Definitions(assets=assets, asset_checks=checks, schedules=schedules, sensors=sensors, jobs=jobs)


def _entity_asset(integration: IntegrationDefinition, entity: EntitySync, partitions, resource_keys, owners):
    key = dg.AssetKey([integration.source, entity.name])
    if integration.capabilities.windowed_polling:
        window_text = (f"One partition = the {entity.entity_set} changed in one hour (lastModifiedDateTime); "
                       "materializing it opens or updates one Jira issue per exception.")
    else:
        window_text = (f"Announced by {entity.business_event}. One partition = the business events received in "
                       f"one hour; materializing it re-reads their {entity.entity_set} over OData and opens or "
                       "updates one Jira issue per exception (done ones are skipped by the ledger).")

    @dg.asset(
        key=key,
        partitions_def=partitions,
        group_name=integration.name,
        kinds={integration.source, "jira"},
        owners=owners,
        pool="jira_site",
        required_resource_keys=resource_keys,
        description=f"{entity.description} {window_text}",
        tags={"connector/entity": entity.name},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL,
                                    jitter=dg.Jitter.PLUS_MINUS),
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        window = context.partition_time_window
        source = make_source(integration, context.resources)
        writer = make_writer(integration, context.resources, context.run_id)
        before = (source.api_calls(), writer.jira.http.calls)
        start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
        if integration.capabilities.windowed_polling:
            report = sync_window(source, writer, entity, start, end)
        else:
            rows = context.resources.connector_store.inbox().received_between(integration.source, start, end)
            report = SyncReport()
            for rep in sync_notified(integration, source, writer, [r.payload for r in rows], [entity]).values():
                report.merge(rep)
        _log_quarantined(context.log, report)
        calls = {integration.source: source.api_calls() - before[0], "jira": writer.jira.http.calls - before[1]}
        md = report_metadata(report.counts(), report.write, calls, report.quarantined)
        md["window"] = dg.MetadataValue.text(f"{window.start.isoformat()} .. {window.end.isoformat()}")
        context.log.info(f"{entity.name} {md['window'].text}: {report.counts()}")
        _fail_on_write_errors(f"{entity.name} window", report.write.failed, md)
        return dg.MaterializeResult(metadata=md)

    return _asset


def _reconcile_check(integration: IntegrationDefinition, entity: EntitySync, resource_keys):
    key = dg.AssetKey([integration.source, entity.name])

    @dg.asset_check(asset=key, name="every_exception_has_one_open_issue", required_resource_keys=resource_keys,
                    description="Every current exception in the source has exactly one open Jira issue "
                                "(missing, duplicate and stale issues fail; orphaned ones are listed).",
                    blocking=False)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source = make_source(integration, context.resources)
        store = context.resources.connector_store
        jira = context.resources.jira.client(store.vault())
        field = jira.resolve_fields([integration.target.external_id_field])[integration.target.external_id_field]
        r = reconcile(integration, source, jira, entity, field)
        md = {
            "current_exceptions": dg.MetadataValue.int(r.exceptions),
            "open_issues": dg.MetadataValue.int(r.open_issues),
            "missing": dg.MetadataValue.int(len(r.missing)),
            "duplicates": dg.MetadataValue.int(len(r.duplicates)),
            "stale_done_in_jira": dg.MetadataValue.int(len(r.stale)),
            "orphaned": dg.MetadataValue.int(len(r.orphaned)),
        }
        if not r.passed:
            md["details"] = dg.MetadataValue.json({"missing": r.missing[:50], "duplicates": r.duplicates,
                                                   "stale": r.stale, "orphaned": r.orphaned})
        return dg.AssetCheckResult(passed=r.passed, metadata=md,
                                   severity=dg.AssetCheckSeverity.ERROR)

    return _check


def _single_op_job(op_def: dg.OpDefinition, name: str, tags: dict[str, str], trigger: str,
                   description: str) -> dg.JobDefinition:
    """The one-op job every sensor/schedule here launches: pair tags plus its trigger, in-process."""

    @dg.job(name=name, tags={**tags, "connector/trigger": trigger}, executor_def=dg.in_process_executor,
            description=description)
    def _job():
        op_def()

    return _job


def _notification_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name = integration.name

    @dg.op(name=f"{name}__sync_notified_records", required_resource_keys=resource_keys, pool="jira_site",
           description="Read the full records the notifications name, then open or update their Jira issues.")
    def sync_notified_records(context: dg.OpExecutionContext, config: InboxBatchConfig) -> dg.Output[None]:
        store = context.resources.connector_store
        inbox = store.inbox()
        rows = inbox.get(config.inbox_ids)
        source = make_source(integration, context.resources)
        writer = make_writer(integration, context.resources, context.run_id)
        before = (source.api_calls(), writer.jira.http.calls)
        reports = sync_notified(integration, source, writer, [r.payload for r in rows])
        total = SyncReport()
        for entity_name, rep in reports.items():
            context.log.info(f"{entity_name}: {rep.counts()}")
            total.merge(rep)
        _log_quarantined(context.log, total)
        calls = {integration.source: source.api_calls() - before[0], "jira": writer.jira.http.calls - before[1]}
        md = report_metadata({"notifications": len(rows), **total.counts()}, total.write, calls, total.quarantined)
        _close_inbox_batch(inbox, rows, context.run_id, total.write.failures, md, lambda n: _write_errors_text(
            n, "notification batch"))
        return dg.Output(None, metadata=md)

    return _single_op_job(sync_notified_records, f"{name}__notification_job", tags, "webhook",
                          f"One batch of {integration.source} notifications -> Jira issues.")


def _resolution_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    name = integration.name

    @dg.op(name=f"{name}__apply_jira_resolutions", required_resource_keys=resource_keys,
           description="For issues moved to done: check the source document's status, then act once.")
    def apply_jira_resolutions(context: dg.OpExecutionContext, config: InboxBatchConfig) -> dg.Output[None]:
        store = context.resources.connector_store
        inbox = store.inbox()
        rows = inbox.get(config.inbox_ids)
        source = make_source(integration, context.resources)
        jira = context.resources.jira.client(store.vault())
        processor = ResolutionProcessor(integration, source, jira, store.ledger(), context.run_id)
        report = processor.process([r.payload.get("event", r.payload) for r in rows])
        md: dict[str, Any] = {k: dg.MetadataValue.int(v) for k, v in report.counts().items()}
        md["events"] = dg.MetadataValue.int(len(rows))
        if report.outcomes:
            md["outcomes"] = dg.MetadataValue.md("\n".join(
                f"- [{k}]({jira.browse_url(k)}): {v}" for k, v in list(report.outcomes.items())[:50]))
        context.log.info(f"resolutions: {report.counts()}")
        if report.failures:
            md["failures"] = dg.MetadataValue.md("\n".join(f"- {k}: {v}" for k, v in report.failures.items()))
        _close_inbox_batch(inbox, rows, context.run_id, report.failures, md, lambda n: (
            f"{n} resolution(s) failed; re-execute to retry them (done ones are skipped by the ledger)."))
        return dg.Output(None, metadata=md)

    return _single_op_job(apply_jira_resolutions, f"{name}__resolution_job", tags, "jira_webhook",
                          "Jira issues moved to done act back on the source documents.")


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


def _jira_webhook_renewal_job(integration: IntegrationDefinition, resource_keys, tags) -> dg.JobDefinition:
    from connector_pipelines.integrations.webhooks import ensure_jira_webhook

    name = integration.name

    @dg.op(name=f"{name}__ensure_jira_webhook", required_resource_keys=resource_keys,
           description="Register the Jira dynamic webhook once and refresh it before its 30-day expiry.")
    def ensure_jira_webhook_op(context: dg.OpExecutionContext) -> dg.Output[None]:
        store = context.resources.connector_store
        result = ensure_jira_webhook(integration, context.resources.jira, store.vault(), store.engine())
        context.log.info(f"Jira webhook {result['webhook_id']}: {result['action']} (expires {result['expires']})")
        return dg.Output(None, metadata={"webhook": dg.MetadataValue.json(result)})

    return _single_op_job(ensure_jira_webhook_op, f"{name}__jira_webhook_renewal_job", tags, "renewal",
                          "Keep the Jira dynamic webhook registered and refreshed.")


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


def _project_filter(project_keys: list[str], comment_prefix: str | None = None):
    """Jira rows this pair can act on: a status transition, or a resolution comment, of an issue in
    one of its projects.

    Other events (other comments — including the echo of our own outcome comments — and field edits)
    stay in the inbox as audit but launch no run.
    """
    from connector_pipelines.integrations.resolution import resolution_comment

    def belongs(row: InboxRow) -> bool:
        event = row.payload.get("event", row.payload)
        kind = event.get("webhookEvent")
        if kind == "jira:issue_updated":
            if not any(i.get("field") == "status" for i in (event.get("changelog") or {}).get("items") or []):
                return False
        elif resolution_comment(event, comment_prefix) is None:
            return False
        issue = event.get("issue") or {}
        project = ((issue.get("fields") or {}).get("project") or {}).get("key")
        if project:
            return project in project_keys
        return any(str(issue.get("key", "")).startswith(f"{k}-") for k in project_keys)

    return belongs


def inbox_settle_seconds(dialect: str) -> float:
    """How long a new inbox row waits before a sensor takes it (CONNECTOR_INBOX_SETTLE_S).

    SQLite serialises writers, so ids become visible in order: 0. On PostgreSQL a sequence value is
    taken before a (slower) concurrent commit; 2 s lets such a row appear before the cursor passes it.
    """
    import os

    configured = os.environ.get("CONNECTOR_INBOX_SETTLE_S")
    if configured:
        return float(configured)
    return 0.0 if dialect == "sqlite" else 2.0


def build_inbox_sensor(name: str, source: str, job: dg.JobDefinition, tags: dict[str, str], *,
                       description: str, row_filter=None, batch_size: int = 500, max_runs_per_tick: int = 4,
                       interval_s: int = 5) -> dg.SensorDefinition:
    """A cursor sensor over the local inbox: one RunRequest per batch, run_key from the rows it covers.

    The tick reads only the project's database (never a vendor API), is bounded by
    ``batch_size * max_runs_per_tick`` rows, and reports the inbox depth as an observation.
    """

    [op_node] = job.graph.nodes  # a one-op job (_single_op_job): its op takes the inbox ids as config
    op_name = op_node.name

    @dg.sensor(name=name, job=job, minimum_interval_seconds=interval_s, description=description,
               required_resource_keys={"connector_store"}, default_status=dg.DefaultSensorStatus.RUNNING)
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        store = context.resources.connector_store
        inbox = store.inbox()
        settle = inbox_settle_seconds(store.engine().dialect.name)
        cursor = int(context.cursor or 0)
        run_requests = []
        for _ in range(max_runs_per_tick):
            rows = inbox.read_after(source, cursor, batch_size, settle_s=settle)
            if not rows:
                break
            cursor = rows[-1].id
            mine = [r for r in rows if row_filter is None or row_filter(r)]
            if not mine:
                continue
            ids = [r.id for r in mine]
            digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]
            run_requests.append(dg.RunRequest(
                run_key=f"{source}:{ids[0]}-{ids[-1]}:{len(ids)}:{digest}",
                run_config={"ops": {op_name: {"config": {"inbox_ids": ids}}}},
                tags={**tags, "connector/inbox_first_id": str(ids[0]), "connector/inbox_last_id": str(ids[-1]),
                      "connector/records": str(len(ids))},
            ))
            if len(rows) < batch_size:
                break
        stats = inbox.stats(source)
        observation = dg.AssetObservation(asset_key=dg.AssetKey(["inbox", source]), metadata={
            "pending": dg.MetadataValue.int(stats["pending"]), "total": dg.MetadataValue.int(stats["total"]),
            "oldest_pending_age_s": dg.MetadataValue.float(stats["oldest_pending_age_s"])})
        if not run_requests and str(cursor) == (context.cursor or "0"):
            return dg.SensorResult(skip_reason=dg.SkipReason(f"No new {source} inbox rows after id {cursor}."),
                                   asset_events=[observation])
        return dg.SensorResult(run_requests=run_requests, cursor=str(cursor), asset_events=[observation])

    return _sensor


class IntegrationPairComponent(dg.Component, dg.Resolvable, IntegrationDefinition):
    """One integration pair declared in YAML (the attributes are IntegrationDefinition's fields)."""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_integration_defs(IntegrationDefinition.model_validate(self.model_dump()))
