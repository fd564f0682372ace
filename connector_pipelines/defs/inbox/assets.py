"""The webhook inboxes as external assets: each inbox sensor reports its depth on them."""

import dagster as dg

business_central_inbox = dg.AssetSpec(
    ["inbox", "business_central"], group_name="inboxes", kinds={"business_central"}, owners=["team:finance-ops"],
    description="Verified Business Central subscription notifications waiting for the BC inbox sensor.")
jira_inbox = dg.AssetSpec(
    ["inbox", "jira"], group_name="inboxes", kinds={"jira"}, owners=["team:finance-ops"],
    description="Verified Jira webhook deliveries (issue transitions, comments) waiting for the Jira inbox sensors.")
finance_operations_inbox = dg.AssetSpec(
    ["inbox", "finance_operations"], group_name="inboxes", kinds={"finance_operations"},
    owners=["team:accounts-payable"],
    description="Verified Dynamics 365 F&O business events (stubs, deduplicated on ControlNumber) waiting for "
                "the F&O inbox sensor.")
acumatica_inbox = dg.AssetSpec(
    ["inbox", "acumatica"], group_name="inboxes", kinds={"acumatica"}, owners=["team:accounts-payable"],
    description="Verified Acumatica push notifications (deduplicated on Id + Query; signals only: the run re-reads "
                "the documents) waiting for the Acumatica inbox sensor.")
monday_inbox = dg.AssetSpec(
    ["inbox", "monday"], group_name="inboxes", kinds={"monday"}, owners=["team:accounts-payable"],
    description="Verified monday.com webhook events (column changes; deduplicated on the trigger) waiting for the "
                "Monday inbox sensors; signals only: the run re-reads the item through the API.")
