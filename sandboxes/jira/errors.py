"""Errors: ``JiraHttpError`` is rendered as an ErrorCollection; ``JqlError`` is its 400 for JQL."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class JiraHttpError(Exception):
    """Answered as Jira's ErrorCollection ``{"errorMessages": [...], "errors": {...}}``."""

    def __init__(self, status: int, messages: Iterable[str] = (), errors: dict[str, str] | None = None):
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        super().__init__(f"{status}: {self.messages} {self.errors}")

    def body(self) -> dict[str, Any]:
        return {"errorMessages": self.messages, "errors": self.errors}


class JqlError(JiraHttpError):
    def __init__(self, message: str):
        super().__init__(400, [message])
