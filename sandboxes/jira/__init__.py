"""The Jira Cloud REST emulator (see app.py); the names other code imports from ``sandboxes.jira``."""

from sandboxes.jira.app import (
    WEBHOOK_EVENTS,
    Delivery,
    JiraFaults,
    JiraHttpError,
    JiraSandbox,
    JqlError,
    adf_text,
    parse_jql,
    text_adf,
    text_matches,
    text_tokens,
    tokenize_jql,
)

__all__ = [
    "WEBHOOK_EVENTS",
    "Delivery",
    "JiraFaults",
    "JiraHttpError",
    "JiraSandbox",
    "JqlError",
    "adf_text",
    "parse_jql",
    "text_adf",
    "text_matches",
    "text_tokens",
    "tokenize_jql",
]
