"""Fields: GET /field (system and custom field definitions) and the validation of field values sent on
create, edit and transition (per system field, per custom field kind, ADF rich text, ``update`` ops)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import fastjsonschema
from starlette.responses import Response

from sandboxes.jira.adf import ADF_MESSAGE
from sandboxes.jira.model import _RESOLUTIONS, _SYSTEM_FIELD_DEFS, CUSTOM_KINDS, Site
from sandboxes.jira.routing import _Ctx

CF_PREFIX = "com.atlassian.jira.plugin.system.customfieldtypes:"
_SETTABLE_SYSTEM = {"summary", "description", "project", "issuetype", "assignee", "reporter", "labels"}


class FieldsMixin:
    """The field catalogue and field-value validation (errors as Jira's ``errors`` map)."""

    def _h_fields(self, ctx: _Ctx) -> Response:
        site = ctx.site
        out = []
        for fid, name, schema, clauses in _SYSTEM_FIELD_DEFS:
            out.append({"id": fid, "key": fid, "name": name, "custom": False, "orderable": True,
                        "navigable": True, "searchable": True, "clauseNames": clauses, "schema": schema})
        for cf in site.custom_fields.values():
            schema = {"type": CUSTOM_KINDS[cf.kind], "custom": CF_PREFIX + cf.kind, "customId": cf.number}
            out.append({"id": cf.id, "key": cf.id, "name": cf.name, "custom": True, "orderable": True,
                        "navigable": True, "searchable": True, "clauseNames": [f"cf[{cf.number}]", cf.name],
                        "schema": schema, "untranslatedName": cf.name})
        # FieldDetails has additionalProperties: false; untranslatedName is not in this spec's copy.
        for f in out:
            f.pop("untranslatedName", None)
        return self._ok(ctx, 200, out)

    def _is_adf(self, value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        try:
            self.adf_validator(value)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def _validate_fields(self, site: Site, fields: dict[str, Any], *, creating: bool,
                         allow_resolution: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
        clean: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for fid, value in fields.items():
            if fid == "resolution" and allow_resolution:
                name = value.get("name") if isinstance(value, dict) else None
                if name not in _RESOLUTIONS:
                    errors[fid] = "Could not find valid 'id' or 'name' in resolution object."
                else:
                    clean[fid] = name
                continue
            if fid in _SETTABLE_SYSTEM:
                if fid == "project" and not creating:
                    errors[fid] = f"Field '{fid}' cannot be set. It is not on the appropriate screen, or unknown."
                    continue
                self._validate_system(site, fid, value, clean, errors)
                continue
            cf = site.custom_fields.get(fid)
            if cf is None:
                errors[fid] = f"Field '{fid}' cannot be set. It is not on the appropriate screen, or unknown."
                continue
            if value is None:
                clean[fid] = None
                continue
            if cf.kind == "textfield":
                if not isinstance(value, str):
                    errors[fid] = "Operation value must be a string"
                elif len(value) > 255:
                    errors[fid] = "The entered text is too long. It exceeds the allowed limit of 255 characters."
                else:
                    clean[fid] = value
            elif cf.kind == "textarea":
                if not self._is_adf(value):
                    errors[fid] = ADF_MESSAGE
                else:
                    clean[fid] = value
            elif cf.kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    errors[fid] = "Operation value must be a number"
                else:
                    clean[fid] = float(value)
            elif cf.kind == "select":
                opt = value.get("value") if isinstance(value, dict) else None
                if isinstance(value, dict) and "id" in value and opt is None:
                    idx = int(value["id"]) - 10100 if str(value["id"]).isdigit() else -1
                    opt = cf.options[idx] if 0 <= idx < len(cf.options) else None
                if opt not in cf.options:
                    errors[fid] = f"Option value '{opt}' is not valid"
                else:
                    clean[fid] = opt
            elif cf.kind == "datetime":
                try:
                    if not isinstance(value, str):
                        raise ValueError  # noqa: TRY004 - caught just below as "not a date-time"
                    datetime.fromisoformat(value.replace("+0000", "+00:00"))
                    clean[fid] = value
                except ValueError:
                    errors[fid] = "Invalid date format. Please enter the date in the format \"yyyy-MM-dd'T'HH:mm:ss.SSSZ\"."
        if creating:
            if "project" not in fields:
                errors.setdefault("project", "Specify a valid project ID or key")
            if "issuetype" not in fields:
                errors.setdefault("issuetype", "Specify an issue type")
            if "summary" not in fields:
                errors.setdefault("summary", "You must specify a summary of the issue.")
        return clean, errors

    def _validate_system(self, site: Site, fid: str, value: Any, clean: dict[str, Any],
                         errors: dict[str, str]) -> None:
        if fid == "summary":
            if not isinstance(value, str) or not value.strip():
                errors[fid] = "You must specify a summary of the issue."
            elif len(value) > 255:
                errors[fid] = "Summary must be less than 255 characters."
            elif "\n" in value or "\r" in value:
                errors[fid] = "The summary is invalid because it contains newline characters."
            else:
                clean[fid] = value
        elif fid == "description":
            if value is not None and not self._is_adf(value):
                errors[fid] = ADF_MESSAGE
            else:
                clean[fid] = value
        elif fid == "project":
            key = value.get("key") if isinstance(value, dict) else None
            pid = value.get("id") if isinstance(value, dict) else None
            project = site.projects.get(str(key).upper()) if key else next(
                (p for p in site.projects.values() if p.id == str(pid)), None)
            if project is None:
                errors[fid] = "Specify a valid project ID or key"
            else:
                clean[fid] = project.key
        elif fid == "issuetype":
            it = None
            if isinstance(value, dict):
                if "id" in value:
                    it = site.issue_types.get(str(value["id"]))
                elif "name" in value:
                    it = next((t for t in site.issue_types.values() if t.name == value["name"]), None)
            if it is None:
                errors[fid] = "Specify a valid issue type"
            else:
                clean[fid] = it.id
        elif fid in ("assignee", "reporter"):
            if value is None:
                clean[fid] = None
                return
            acc = value.get("accountId") or value.get("id") if isinstance(value, dict) else None
            if acc not in site.users:
                errors[fid] = "Specified user does not exist or you do not have required permissions"
            else:
                clean[fid] = acc
        elif fid == "labels":
            if not isinstance(value, list) or not all(isinstance(v, str) and " " not in v for v in value):
                errors[fid] = "The label contains spaces or is not a list of strings."
            else:
                clean[fid] = list(value)

    def _apply_update_ops(self, fields: dict[str, Any], update: Any) -> dict[str, str]:
        """IssueUpdateDetails.update: only ``set`` (and labels add/remove) are emulated."""
        errors: dict[str, str] = {}
        if not update:
            return errors
        for fid, ops in update.items():
            for op in ops:
                if "set" in op:
                    fields[fid] = op["set"]
                elif fid == "labels" and ("add" in op or "remove" in op):
                    fields.setdefault("__labels_ops__", []).append(op)
                else:
                    errors[fid] = f"The sandbox supports only 'set' operations on {fid}."
        return errors
