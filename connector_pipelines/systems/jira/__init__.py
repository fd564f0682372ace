"""Jira Cloud platform REST v3 for an OAuth 2.0 (3LO) app (no Dagster here)."""

from connector_pipelines.systems.jira.client import JiraClient
from connector_pipelines.systems.jira.errors import JiraConfigError, JiraError, JiraWebhookError
from connector_pipelines.systems.jira.models import BulkCreateResult, CreatedIssue, JiraField

__all__ = ["BulkCreateResult", "CreatedIssue", "JiraClient", "JiraConfigError", "JiraError", "JiraField",
           "JiraWebhookError"]
