"""The webhook inboxes as external assets, upstream of the assets and backlogs they feed.

The receiver (connector_pipelines.receiver) writes these tables, not a Dagster run: they cannot be
materialized. Each inbox sensor records an observation when it reads new rows, so the asset page shows
when deliveries last arrived; each pair's ``[<pair>, inbox, <source>]`` backlog shows what is still owed.
"""

import dagster as dg

from connector_pipelines.components.inbox_sensor import inbox_asset_key

FED_BY_THE_RECEIVER = (
    " Fed by the webhook receiver, not by Dagster: there is nothing to materialize (the button stays disabled). "
    "The inbox sensors record an observation when they read new deliveries ('last observed' = when deliveries "
    "last arrived); each pair's inbox backlog asset shows what is still owed and the dead letters.")


def _inbox(source: str, owner: str, what: str) -> dg.AssetSpec:
    return dg.AssetSpec(inbox_asset_key(source), group_name="inboxes", kinds={source}, owners=[owner],
                        description=what + FED_BY_THE_RECEIVER)


business_central_inbox = _inbox(
    "business_central", "team:finance-ops",
    "Verified Business Central subscription notifications waiting for the BC inbox sensor.")
jira_inbox = _inbox(
    "jira", "team:finance-ops",
    "Verified Jira webhook deliveries (issue transitions, comments) waiting for the Jira inbox sensors.")
finance_operations_inbox = _inbox(
    "finance_operations", "team:accounts-payable",
    "Verified Dynamics 365 F&O business events (stubs, deduplicated on ControlNumber) waiting for the F&O inbox "
    "sensors.")
acumatica_inbox = _inbox(
    "acumatica", "team:accounts-payable",
    "Verified Acumatica push notifications (deduplicated on Id + Query; signals only: the run re-reads the "
    "documents) waiting for the Acumatica inbox sensor.")
monday_inbox = _inbox(
    "monday", "team:accounts-payable",
    "Verified monday.com webhook events (column changes; deduplicated on the trigger) waiting for the Monday inbox "
    "sensors; signals only: the run re-reads the item through the API.")
