"""monday.com's error shapes (API-FACTS §6.5; developer.monday.com/api-reference/docs/error-handling).

Application errors answer HTTP 200 with ``{"data": ..., "errors": [{message, locations, path, extensions: {code,
status_code, error_data}}], "account_id", "extensions": {"request_id"}}`` (partial ``data`` beside them).
Transport-layer errors (auth, limits, a locked board) use a real HTTP status and ``Retry-After``.
"""

from __future__ import annotations

from typing import Any


class MondayError(Exception):
    """An application-level error of one field (HTTP 200, ``errors[]`` entry with the field's path)."""

    def __init__(self, message: str, code: str, *, error_data: dict[str, Any] | None = None,
                 status_code: int = 200, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.error_data = error_data if error_data is not None else {}
        self.status_code = status_code
        self.extra = extra or {}

    def extensions(self) -> dict[str, Any]:
        ext: dict[str, Any] = {"code": self.code, "status_code": self.status_code, "error_data": self.error_data}
        ext.update(self.extra)
        return ext


class HttpFailure(Exception):
    """Ends the whole request with a transport-level status (429, 423, 401, 400...): ``errors[]`` without data."""

    def __init__(self, status: int, message: str, code: str | None, *, retry_after: float | None = None,
                 extensions: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.extensions = extensions or {}

    def error(self) -> dict[str, Any]:
        ext = dict(self.extensions)
        if self.code is not None:
            ext = {"code": self.code, **ext}
        err: dict[str, Any] = {"message": self.message}
        if ext:
            err["extensions"] = ext
        return err


CHANGE_COLUMN_VALUES_DOC = "https://developer.monday.com/api-reference/docs/change-column-values"


def column_value_error(column_type: str, detail: str = "invalid value") -> MondayError:
    """ColumnValueException as the changelog shows it ("invalid value - label does not exist in column. Please
    check our API documentation ..."; ``error_data.column_type``). Only the label wording is documented; the other
    details ("invalid value - <what>") are this sandbox's (UNCONFIRMED)."""
    return MondayError(f"{detail}. Please check our API documentation for the correct data structure for this "
                       f"column. {CHANGE_COLUMN_VALUES_DOC}", "ColumnValueException",
                       error_data={"column_type": column_type})
