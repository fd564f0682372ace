"""Pydantic models for the parts of Jira's answers the product relies on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JiraField(BaseModel):
    """One entry of GET /rest/api/3/field (FieldDetails)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    custom: bool = False
    clause_names: list[str] = Field(default_factory=list)
    schema_type: str | None = None
    schema_custom: str | None = None
    custom_id: int | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> JiraField:
        schema = data.get("schema") or {}
        return cls(id=data["id"], name=data.get("name") or data["id"], custom=bool(data.get("custom")),
                   clause_names=list(data.get("clauseNames") or []), schema_type=schema.get("type"),
                   schema_custom=schema.get("custom"), custom_id=schema.get("customId"))

    @property
    def jql_clause(self) -> str:
        """The JQL name to search this field by: ``cf[n]`` for custom fields (never the display name,
        which may be shared), else the first clause name."""
        for name in self.clause_names:
            if name.startswith("cf["):
                return name
        if self.custom_id is not None:
            return f"cf[{self.custom_id}]"
        if self.id.startswith("customfield_"):
            return f"cf[{self.id.removeprefix('customfield_')}]"
        return self.clause_names[0] if self.clause_names else self.id


class CreatedIssue(BaseModel):
    """POST /rest/api/3/issue answer (CreatedIssue)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    id: str
    key: str
    self_url: str | None = Field(default=None, alias="self")


class BulkCreateResult(BaseModel):
    """Outcome of a bulk create, aligned with the input order."""

    created: list[CreatedIssue | None] = Field(default_factory=list)
    errors: dict[int, str] = Field(default_factory=dict)
    error_status: dict[int, int] = Field(default_factory=dict)   # the HTTP status Jira gave each failed element

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def failed_indices(self) -> list[int]:
        return sorted(self.errors)


__all__ = ["BulkCreateResult", "CreatedIssue", "JiraField"]
