"""Errors of the monday.com client, and the one place that reads monday's error bodies.

monday answers application errors with **HTTP 200** and ``{"errors": [{message, locations, path, extensions:
{code, status_code, error_data, retry_in_seconds}}], "account_id"}`` (possibly with partial ``data``); since
2024-10 the legacy top-level ``error_code`` / ``error_message`` / ``error_data`` / ``status_code`` may be present
too (API-FACTS §6.5). Transport-layer errors use real HTTP statuses (400, 401, 423, 429, 500) and carry
``Retry-After``. ``classify`` turns any of these shapes into one typed error.

Every API error derives from ``core.http.ApiError`` (so ``core.failures.is_transient`` classifies it by its
``status``: 429 and 423 are transient, a bad column value is a permanent 400) and from ``MondayError``.
No error message or attribute ever carries the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from connector_pipelines.core.http import ApiError, parse_retry_after

SYSTEM = "monday"

# Error codes (extensions.code or the legacy error_code), as monday's docs and changelog name them.
RATE_CODES = frozenset({
    "COMPLEXITY_BUDGET_EXHAUSTED",   # 2025-01+ (changelog "Updated complexity budget exhausted error")
    "ComplexityException",           # older name (rate-limits page, changelog)
    "FIELD_LIMIT_EXCEEDED",          # error_data.retry_in_seconds + entity (changelog)
    "RATE_LIMIT_EXCEEDED",           # "Rate Limit Exceeded" minute limit (errors page; code spelling UNCONFIRMED)
    "maxConcurrencyExceeded",        # concurrency limit, 429 (errors page)
    "IP_RATE_LIMIT_EXCEEDED",        # IP limit (rate-limits page)
    "DAILY_LIMIT_EXCEEDED",          # daily call limit, resets at midnight UTC (support article)
})
LOCK_CODES = frozenset({"RESOURCE_LOCKED", "ResourceLockedException"})   # UNCONFIRMED: 423 is documented, no code
COLUMN_VALUE_CODES = frozenset({
    "ColumnValueException",          # documented (changelog "Column value exception error column_type update")
    "InvalidColumnIdException",      # a column id the board does not have (errors page)
    "InvalidValueException",         # UNCONFIRMED spelling
})
AUTH_CODES = frozenset({"UserUnauthorizedException", "Unauthorized", "USER_UNAUTHORIZED", "NOT_AUTHENTICATED"})
NOT_FOUND_CODES = frozenset({"InvalidBoardIdException", "InvalidItemIdException", "ResourceNotFoundException",
                             "InvalidGroupIdException", "ItemNotFoundInBoard"})
# UNCONFIRMED: monday's docs searched here name no code for an expired items_page cursor (the cursor "is valid
# for 60 minutes"); these spellings and the message pattern below are what the client recognises.
CURSOR_CODES = frozenset({"CursorExpiredError", "CURSOR_EXPIRED", "CursorException", "InvalidCursorException",
                          "INVALID_CURSOR"})
_CURSOR_MESSAGE = re.compile(r"cursor.*(expired|invalid|not valid)|(expired|invalid) cursor", re.IGNORECASE)
_LOCK_MESSAGE = re.compile(r"resource is currently locked|board is locked", re.IGNORECASE)
_RESET_IN = re.compile(r"reset in (\d+(?:\.\d+)?) seconds?", re.IGNORECASE)


class MondayError(Exception):
    """Base of every monday.com client error."""


class MondayConfigError(MondayError):
    """The board does not match the configuration: ``missing`` column ids, ``mismatched`` {id: (expected, actual)}."""

    def __init__(self, message: str, *, board_id: str | None = None, missing: list[str] | None = None,
                 mismatched: dict[str, tuple[str, str]] | None = None) -> None:
        self.board_id = board_id
        self.missing = list(missing or [])
        self.mismatched = dict(mismatched or {})
        super().__init__(message)


class MondayApiError(ApiError, MondayError):
    """monday answered an error. ``code`` (extensions.code / error_code), ``status`` (the HTTP status, or the
    ``status_code`` monday put in the body for an HTTP-200 application error), ``error_data``, ``messages``,
    ``path`` (of the first error: the alias of a failed mutation in a batch), ``request_id``."""

    default_status = 400

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 error_data: Mapping[str, Any] | None = None, body: Any = None, operation: str = "POST",
                 url: str = "/v2", path: list[Any] | None = None, messages: list[str] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(SYSTEM, operation, url, status or self.default_status, body)
        self.code = code
        self.error_data = dict(error_data or {})
        self.path = list(path or [])
        self.messages = list(messages or [message])
        self.request_id = request_id
        self.args = (f"monday {operation} -> {code or 'error'} (status {self.status}): {message}",)

    @property
    def alias(self) -> str | None:
        """The root field (alias) the error belongs to, e.g. ``c3`` of a batched ``create_items``."""
        return str(self.path[0]) if self.path else None


class MondayAuthError(MondayApiError):
    """The token was refused (401) or lacks a permission (403): a person must act."""

    default_status = 401


class MondayNotFound(MondayApiError):
    """A board, item or group id that does not exist (or the token cannot see)."""

    default_status = 404


class MondayRateLimited(MondayApiError):
    """A rate or complexity limit: COMPLEXITY_BUDGET_EXHAUSTED, FIELD_LIMIT_EXCEEDED, a 429, the daily limit.
    ``retry_in_s``: monday's advertised wait (None when it gave none); ``daily``: the daily call limit (waits
    until midnight UTC; never waited for inside a call)."""

    default_status = 429

    def __init__(self, message: str, *, retry_in_s: float | None = None, daily: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_in_s = retry_in_s
        self.daily = daily


class MondayBoardLocked(MondayApiError):
    """423 "Resource is currently locked": another process updates the board; retry after a short delay."""

    default_status = 423


class MondayColumnValueError(MondayApiError):
    """A column value monday refused (ColumnValueException, an unknown column id): permanent, fix the mapping.
    ``column_id`` / ``column_type`` come from ``error_data`` when monday gives them."""

    default_status = 400

    @property
    def column_id(self) -> str | None:
        value = self.error_data.get("column_id") or self.error_data.get("column")
        return str(value) if value is not None else None

    @property
    def column_type(self) -> str | None:
        value = self.error_data.get("column_type")
        return str(value) if value is not None else None


class MondayCursorExpired(MondayApiError):
    """An items_page cursor that expired (60 minutes) or became invalid; the client re-issues the read."""

    default_status = 410


def _seconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _until_midnight_utc(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def _first_error(body: Mapping[str, Any]) -> dict[str, Any]:
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0]
        return first if isinstance(first, dict) else {"message": str(first)}
    return {}


def error_from(err: Mapping[str, Any], *, http_status: int = 200, body: Any = None,
               headers: Mapping[str, str] | None = None, operation: str = "POST", url: str = "/v2",
               legacy: Mapping[str, Any] | None = None) -> MondayApiError:
    """One typed error from one entry of ``errors[]`` (plus the legacy top-level fields and the HTTP status)."""
    legacy = legacy or {}
    ext = err.get("extensions") if isinstance(err.get("extensions"), dict) else {}
    code = ext.get("code") or legacy.get("error_code")
    code = str(code) if code is not None else None
    message = str(err.get("message") or legacy.get("error_message") or f"HTTP {http_status}")
    error_data = ext.get("error_data") if isinstance(ext.get("error_data"), dict) else None
    if error_data is None and isinstance(legacy.get("error_data"), dict):
        error_data = legacy["error_data"]
    error_data = error_data or {}
    body_status = ext.get("status_code") or legacy.get("status_code")
    try:
        body_status = int(body_status) if body_status is not None else None
    except (TypeError, ValueError):
        body_status = None
    status = http_status if http_status >= 300 else (body_status if body_status and body_status >= 300 else None)
    common: dict[str, Any] = {
        "status": status, "code": code, "error_data": error_data, "body": body, "operation": operation, "url": url,
        "path": err.get("path") if isinstance(err.get("path"), list) else None,
        "request_id": ext.get("request_id") if isinstance(ext.get("request_id"), str) else None,
    }
    code_l = (code or "").lower()

    if code in RATE_CODES or status == 429 or "rate limit" in message.lower() or "complexity budget" in message.lower():
        retry = (_seconds(ext.get("retry_in_seconds")) or _seconds(error_data.get("retry_in_seconds"))
                 or parse_retry_after((headers or {}).get("Retry-After")))
        if retry is None:
            m = _RESET_IN.search(message)
            retry = float(m.group(1)) if m else None
        daily = code == "DAILY_LIMIT_EXCEEDED"
        if daily and retry is None:
            retry = _until_midnight_utc()
        common["status"] = 429
        return MondayRateLimited(message, retry_in_s=retry, daily=daily, **common)
    if code in LOCK_CODES or status == 423 or _LOCK_MESSAGE.search(message):
        common["status"] = 423
        return MondayBoardLocked(message, **common)
    if code in COLUMN_VALUE_CODES:
        if status is None or status < 400 or status >= 500:
            common["status"] = 400
        return MondayColumnValueError(message, **common)
    if code in CURSOR_CODES or "cursor" in code_l or _CURSOR_MESSAGE.search(message):
        common["status"] = 410
        return MondayCursorExpired(message, **common)
    if code in AUTH_CODES or status in (401, 403):
        return MondayAuthError(message, **common)
    if code in NOT_FOUND_CODES or status == 404:
        common["status"] = 404
        return MondayNotFound(message, **common)
    return MondayApiError(message, **common)


def classify(http_status: int, body: Any, headers: Mapping[str, str] | None = None, *,
             operation: str = "POST", url: str = "/v2") -> list[MondayApiError]:
    """Every error in a monday answer as typed errors (empty: no error). Handles ``errors[]`` (with or without
    ``extensions``), the legacy top-level fields, and a non-2xx HTTP status with any body."""
    kw: dict[str, Any] = {"http_status": http_status, "body": body, "headers": headers, "operation": operation,
                          "url": url}
    if isinstance(body, dict):
        legacy = {k: body.get(k) for k in ("error_code", "error_message", "error_data", "status_code")
                  if body.get(k) is not None}
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            out = []
            for err in errors:
                entry = err if isinstance(err, dict) else {"message": str(err)}
                out.append(error_from(entry, legacy=legacy if len(errors) == 1 else None, **kw))
            return out
        if legacy.get("error_code") or legacy.get("error_message"):
            return [error_from({}, legacy=legacy, **kw)]
    if http_status >= 300:
        message = body if isinstance(body, str) and body else f"HTTP {http_status}"
        return [error_from({"message": str(message)[:300]}, **kw)]
    return []


__all__ = [
    "MondayApiError",
    "MondayAuthError",
    "MondayBoardLocked",
    "MondayColumnValueError",
    "MondayConfigError",
    "MondayCursorExpired",
    "MondayError",
    "MondayNotFound",
    "MondayRateLimited",
    "classify",
    "error_from",
]
