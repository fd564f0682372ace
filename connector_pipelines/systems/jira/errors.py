"""Errors of the Jira client (HTTP failures arrive as core.http.ApiError)."""

from __future__ import annotations


class JiraError(Exception):
    """Base class for Jira client errors that are not plain HTTP failures."""


class JiraConfigError(JiraError):
    """The site does not match the configuration: a field name is missing or shared by several fields."""

    def __init__(self, message: str, *, missing: list[str] | None = None,
                 ambiguous: dict[str, list[str]] | None = None) -> None:
        self.missing = list(missing or [])
        self.ambiguous = dict(ambiguous or {})
        super().__init__(message)


class JiraWebhookError(JiraError):
    """Jira refused a webhook registration; ``errors`` holds Jira's messages."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors or [])
        super().__init__(message + (": " + "; ".join(self.errors) if self.errors else ""))


__all__ = ["JiraConfigError", "JiraError", "JiraWebhookError"]
