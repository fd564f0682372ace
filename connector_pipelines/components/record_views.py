"""Single records on an entity's asset page, where finance ops look (issue 13, items 2 and 3).

- ``no_record_needs_a_person`` (an asset check per entity, read from the ledger only, so it is cheap): every
  record of the set that no automatic retry will write — quarantined, or failed permanently (records, and
  resolutions / write-backs the source refused) — named in business words with its ERP and target links, the
  reason, since when and how many attempts; how many wait for an automatic retry; when the full hourly
  reconcile last ran and what it found. It is evaluated in the same run as every materialization of the set's
  windows (the poll and mirror jobs select it, and a Materialize from the UI runs an asset's checks), and by
  the runs that change such records without materializing (resolutions, re-drives) — so between two hourly
  reconciles the asset never shows a check "Not evaluated" for what the ledger knows.
- ``<pair>__redrive_job``: once the cause is fixed, the records that need a person are read again and written
  through the normal path (sync.retry_records, the ledger retry's own mechanism); launchable from the
  Launchpad, whose default config re-drives every record of the pair that needs a person.
- ``resolution_observations``: what a resolution run did, recorded on each entity's asset as an observation
  (the latest outcomes: document, target record, outcome; counts).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from connector_pipelines.components.run_tags import tag_run_of_pair
from connector_pipelines.core.ledger import DONE, FAILED, QUARANTINED, Ledger, LedgerEntry
from connector_pipelines.integrations.definition import EntitySync, IntegrationDefinition
from connector_pipelines.integrations.documents import (
    MAX_ROWS,
    Document,
    markdown_table,
    of_entry,
    parent_key,
    when,
)
from connector_pipelines.integrations.write_back import RECORD_ACTION, WriteBackReport

NEEDS_A_PERSON = "no_record_needs_a_person"
RECONCILE = "every_exception_has_one_open_issue"
REDRIVE = "redrive_job"


def _cell(text: Any) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ").strip()


def _link(text: str, url: str | None) -> str:
    return f"[{_cell(text)}]({url})" if url else (_cell(text) or "—")


def asset_key_of(integration: IntegrationDefinition, entity: EntitySync) -> dg.AssetKey:
    return dg.AssetKey([integration.source, entity.name])


def _documents(integration: IntegrationDefinition, entity: EntitySync, ledger: Ledger,
               entries: list[LedgerEntry]) -> dict[str, tuple[Document, LedgerEntry | None]]:
    """Each row's record, named from the record row (a write-back row ``<key>#resolve`` is named by ``<key>``)."""
    parents = ledger.get_many(integration.name, {parent_key(e.source_key) for e in entries})
    out = {}
    for e in entries:
        parent = parents.get(parent_key(e.source_key))
        out[e.source_key] = (of_entry(entity, parent or e, parent_key(e.source_key)), parent)
    return out


def _target_of(entry: LedgerEntry, parent: LedgerEntry | None) -> tuple[str, str | None]:
    """The target record a row is about: its own, or (a write-back row) the one the person changed."""
    key = entry.target_key or (entry.context or {}).get("target") or (parent.target_key if parent else None)
    url = entry.target_url or (parent.target_url if parent and parent.target_key == key else None)
    return key or "", url


# ------------------------------------------------------------------------------------------------
# the quarantined / failed-record view
# ------------------------------------------------------------------------------------------------
def needs_a_person_result(integration: IntegrationDefinition, entity: EntitySync, ledger: Ledger,
                          instance: dg.DagsterInstance | None = None
                          ) -> tuple[bool, dict[str, Any], str]:
    """(passed, metadata, description) of ``no_record_needs_a_person`` for one entity, from the ledger."""
    name = integration.name
    src, tgt = integration.capabilities.label, integration.target_system.label
    counts = ledger.attention(name, entity.name)
    entries = ledger.needing_a_person(name, entity.name, limit=MAX_ROWS)
    docs = _documents(integration, entity, ledger, entries)
    rows = []
    for e in entries:
        doc, parent = docs[e.source_key]
        target_key, target_url = _target_of(e, parent)
        if e.action == RECORD_ACTION:
            what = f"write to {tgt}"
            step = f"fix the cause, then launch {name}__{REDRIVE}"
        else:
            what = e.action.replace("_", " ")
            step = f"fix the document in {src}, then make the change in {tgt} again"
        state = "quarantined" if e.state == QUARANTINED else "failed"
        rows.append([_cell(doc.words), _link(doc.label, doc.url), _link(target_key, target_url),
                     _cell(f"{what} {state}: {(e.last_error or '')[:300]}"), _cell(when(e.updated_at)),
                     str(e.attempts), _cell(step)])
    md: dict[str, Any] = {
        "needs_a_person": dg.MetadataValue.int(counts["needs_a_person"]),
        "waiting_for_automatic_retry": dg.MetadataValue.int(counts["retrying"]),
        "being_written": dg.MetadataValue.int(counts["being_written"]),
    }
    if rows:
        md["records"] = dg.MetadataValue.md(markdown_table(
            ["Document", f"{src} record", f"{tgt} record", "Reason", "Since", "Attempts", "Next step"],
            rows, counts["needs_a_person"], f" (`connector-pipelines ledger {name}` lists every one)"))
        first, (doc, parent) = entries[0], docs[entries[0].source_key]
        md["first"] = dg.MetadataValue.text(f"{doc.words}: {(first.last_error or '')[:200]}")
        if doc.url:
            md["first_erp_record"] = dg.MetadataValue.url(doc.url)
        target_key, target_url = _target_of(first, parent)
        if target_url:
            md["first_target_record"] = dg.MetadataValue.url(target_url)
        md["redrive"] = dg.MetadataValue.text(
            f"Once the cause is fixed: launch {name}__{REDRIVE} from the Launchpad (its default config re-drives "
            f"every record of {name} that needs a person; set entity: {entity.name} or ledger_keys to narrow it).")
    md.update(_last_reconcile(integration, entity, instance))
    passed = counts["needs_a_person"] == 0
    if passed:
        waiting = f"; {counts['retrying']} wait for an automatic retry" if counts["retrying"] else ""
        description = f"No {entity.document_label.lower()} needs a person{waiting}."
    else:
        names = "; ".join(docs[e.source_key][0].words for e in entries[:3])
        more = f" and {counts['needs_a_person'] - 3} more" if counts["needs_a_person"] > 3 else ""
        description = f"{counts['needs_a_person']} record(s) need a person: {names}{more}."
    return passed, md, description


def _last_reconcile(integration: IntegrationDefinition, entity: EntitySync,
                    instance: dg.DagsterInstance | None) -> dict[str, Any]:
    """When the full (hourly) reconcile of the set last ran, and what it said: shown beside this check, which
    is evaluated far more often (the reconcile's own status reads "not evaluated" after every new window)."""
    if instance is None:
        return {}
    record = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(asset_key_of(integration, entity), RECONCILE))
    evaluation = record.evaluation if record is not None else None
    if record is None or evaluation is None:
        return {"last_full_reconcile": dg.MetadataValue.text("not run yet (the reconcile schedule runs it hourly)")}
    verdict = "passed" if evaluation.passed else f"failed: {evaluation.description or 'see the check'}"
    return {"last_full_reconcile_at": dg.MetadataValue.timestamp(record.create_timestamp),
            "last_full_reconcile": dg.MetadataValue.text(
                f"{when(datetime.fromtimestamp(record.create_timestamp, UTC))}, {verdict}"[:500])}


def needs_a_person_check(integration: IntegrationDefinition, entity: EntitySync,
                         tags: dict[str, str]) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key_of(integration, entity), name=NEEDS_A_PERSON,
                    required_resource_keys={"connector_store"}, blocking=False,
                    description=f"No {entity.document_label.lower()} waits for a person: lists every record the "
                                "connector could not write (quarantined, or failed for good) and every resolution "
                                "the source refused, in business words with the reason, since when and the "
                                f"attempts; re-drive them with {integration.name}__{REDRIVE}. Read from the ledger, "
                                "evaluated with every materialization; also shows when the full reconcile last ran.")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        tag_run_of_pair(context.instance, context.op_execution_context.run_id, tags)
        passed, md, description = needs_a_person_result(
            integration, entity, context.resources.connector_store.ledger(), context.instance)
        return dg.AssetCheckResult(passed=passed, metadata=md, severity=dg.AssetCheckSeverity.WARN,
                                   description=description)

    return _check


def needs_a_person_evaluation(integration: IntegrationDefinition, entity: EntitySync, ledger: Ledger,
                              instance: dg.DagsterInstance | None) -> dg.AssetCheckEvaluation:
    """The same check, evaluated inside a run that changed the set's records (``context.log_event`` it)."""
    passed, md, description = needs_a_person_result(integration, entity, ledger, instance)
    return dg.AssetCheckEvaluation(asset_key=asset_key_of(integration, entity), check_name=NEEDS_A_PERSON,
                                   passed=passed, metadata=md, severity=dg.AssetCheckSeverity.WARN,
                                   description=description)


# ------------------------------------------------------------------------------------------------
# resolutions on the asset
# ------------------------------------------------------------------------------------------------
def resolution_observations(integration: IntegrationDefinition, ledger: Ledger, report: WriteBackReport,
                            url: Callable[[str], str], limit: int = 10) -> list[dg.AssetObservation]:
    """One observation per entity a resolution batch touched: the latest outcomes of the entity's resolutions
    and write-backs (this batch's first), the outcome of this batch in one line, and counts."""
    src, tgt = integration.capabilities.label, integration.target_system.label
    by_entity: dict[str, list[str]] = {}
    for target_key, (entity_name, _source_key) in report.about.items():
        by_entity.setdefault(entity_name, []).append(target_key)
    events = []
    for entity_name, target_keys in sorted(by_entity.items()):
        entity = integration.entity(entity_name)
        actions = [entity.resolution, "write_back"]
        latest = ledger.latest(integration.name, entity.name, actions, limit)
        docs = _documents(integration, entity, ledger, latest)
        rows = []
        for e in latest:
            doc, parent = docs[e.source_key]
            target_key, _ = _target_of(e, parent)
            outcome = (e.context or {}).get("message") or e.last_error or e.state
            if e.state == QUARANTINED or (e.state == FAILED and e.retry_after is None):
                outcome = f"needs a person: {outcome}"
            elif e.state == FAILED:
                outcome = f"retried after {when(e.retry_after)}: {outcome}"
            rows.append([_cell(when(e.updated_at)), _cell(doc.words), _link(doc.label, doc.url),
                         _link(target_key, url(target_key) if target_key else None), _cell(str(outcome)[:300])])
        batch = [report.outcomes.get(k) or report.failures.get(k) or
                 (f"not acted on: {report.refusals[k]}" if k in report.refusals else "") for k in target_keys]
        batch = [m for m in batch if m]
        totals = ledger.action_counts(integration.name, entity.name, actions)
        md: dict[str, Any] = {
            "outcome": dg.MetadataValue.text("; ".join(batch)[:500] or "nothing to do"),
            "events_in_this_run": dg.MetadataValue.int(len(target_keys)),
            "resolved_total": dg.MetadataValue.int(totals[DONE]),
            "needs_a_person_total": dg.MetadataValue.int(totals[QUARANTINED]),
            "failed_total": dg.MetadataValue.int(totals[FAILED]),
        }
        if rows:
            md["latest_outcomes"] = dg.MetadataValue.md(markdown_table(
                ["When", "Document", f"{src} record", f"{tgt} record", "Outcome"], rows))
        first = target_keys[0]
        md["first_target_record"] = dg.MetadataValue.url(url(first))
        refused = {k: report.refusals[k] for k in target_keys if k in report.refusals}
        if refused:
            md["refused"] = dg.MetadataValue.md("\n".join(f"- [{k}]({url(k)}): {_cell(v)}" for k, v in refused.items()))
        events.append(dg.AssetObservation(
            asset_key=asset_key_of(integration, entity), metadata=md,
            description=f"{tgt} resolutions: {'; '.join(batch)[:300] or 'nothing to do'}"))
    return events


# ------------------------------------------------------------------------------------------------
# re-drive
# ------------------------------------------------------------------------------------------------
class RedriveConfig(dg.Config):
    """Which records to read again and write through the normal path, once the cause is fixed. The default
    (nothing set) re-drives every record of the pair that needs a person."""

    entity: str = Field(default="", description=(
        "Only this entity's records (its asset name, e.g. purchase_invoices_awaiting_review); empty: every entity"))
    ledger_keys: list[str] = Field(default_factory=list, description=(
        "Only these records, by ledger key (e.g. bc:purchaseInvoices:<id>); empty: every record needing a person"))


def redrive_job(integration: IntegrationDefinition, resource_keys: set[str], job_tags: dict[str, str]
                ) -> dg.JobDefinition:
    """``<pair>__redrive_job``: the records that need a person, read again and written through the normal path
    once their cause is fixed (the ledger retry's mechanism, sync.retry_records, on rows no retry will pick)."""
    name = integration.name
    tgt = integration.target_system.label

    @dg.op(name=f"{name}__redrive_records", required_resource_keys=resource_keys,
           pool=integration.target_system.pool,
           description=f"Read the records that need a person again and write them to {tgt} through the normal "
                       "path; a record still refused stays listed with the new reason.")
    def redrive_records(context: dg.OpExecutionContext, config: RedriveConfig) -> dg.Output[None]:
        # integration_pair imports this module: its helpers are taken when the op runs
        from connector_pipelines.components.integration_pair import make_source, make_writer, report_metadata
        from connector_pipelines.integrations.sync import SyncReport, retry_records

        if config.entity:
            try:
                integration.entity(config.entity)
            except KeyError as exc:
                raise dg.Failure(f"{name} has no entity {config.entity!r}; its entities are "
                                 f"{', '.join(e.name for e in integration.entities)}", allow_retries=False) from exc
        ledger = context.resources.connector_store.ledger()
        keys = config.ledger_keys or None
        chosen = ledger.needing_a_person(name, config.entity or None, keys=keys)
        records = [e for e in chosen if e.action == RECORD_ACTION]
        others = [e for e in chosen if e.action != RECORD_ACTION]
        if keys:
            unknown = sorted(set(keys) - {e.source_key for e in chosen})
            if unknown:
                context.log.warning(f"not re-driven (no record of {name} needing a person has these keys): "
                                    + ", ".join(unknown[:20]))
        for e in others:
            context.log.info(f"{e.source_key}: a {e.action.replace('_', ' ')} the source refused is re-driven by "
                             f"making the change in {tgt} again, once the document is fixed")
        total = SyncReport()
        if records:
            source = make_source(integration, context.resources)
            writer = make_writer(integration, context.resources, context.run_id)
            for rep in retry_records(integration, source, writer, records, keep_unreadable=True).values():
                total.merge(rep)
        md = report_metadata({"records": len(records), **total.counts()}, total.write, {}, total.quarantined)
        md["not_redriven_resolutions"] = dg.MetadataValue.int(len(others))
        context.log.info(f"re-drove {len(records)} record(s): {total.counts()}")
        for entity in integration.entities:
            if any(e.entity == entity.name for e in chosen):
                context.log_event(needs_a_person_evaluation(integration, entity, ledger, context.instance))
        still = {**total.needs_a_person, **total.quarantined}
        if still:
            raise dg.Failure(description=f"{len(still)} re-driven record(s) still cannot be written; "
                                         f"{NEEDS_A_PERSON} lists them with the new reason.",
                             metadata=md, allow_retries=False)
        return dg.Output(None, metadata=md)

    @dg.job(name=f"{name}__{REDRIVE}", tags={**job_tags, "connector/trigger": "redrive"},
            executor_def=dg.in_process_executor,
            config=dg.RunConfig(ops={redrive_records.name: RedriveConfig()}),
            description=f"Re-drive the records of {name} that need a person once their cause is fixed: read them "
                        f"again and write them to {tgt}. Default config: every such record; set entity or "
                        "ledger_keys to narrow it.")
    def _job():
        redrive_records()

    return _job
