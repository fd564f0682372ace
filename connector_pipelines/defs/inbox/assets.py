"""The webhook inboxes as external assets: each inbox sensor reports its depth on them."""

import dagster as dg

business_central_inbox = dg.AssetSpec(
    ["inbox", "business_central"], group_name="inboxes", kinds={"business_central"}, owners=["team:finance-ops"],
    description="Verified Business Central subscription notifications waiting for the BC inbox sensor.")
jira_inbox = dg.AssetSpec(
    ["inbox", "jira"], group_name="inboxes", kinds={"jira"}, owners=["team:finance-ops"],
    description="Verified Jira webhook deliveries (issue transitions, comments) waiting for the Jira inbox sensors.")
