"""Document rules of the Acumatica sandbox: defaults, totals, Hold/Status, approval and release.

Status values are the **display labels** the screens show ("On Hold", "Balanced", "Pending Approval",
"Rejected", "Open", "Closed", "Voided"); Acumatica's contract-based API returns StringValue statuses and the
Postman collection compares them with labels ("Bill status is Balanced"). UNCONFIRMED: that every status reaches
the API as its label and never as the one-letter code (H, B, ...).

- New documents start on hold unless the request says ``Hold: false`` (the "Hold Documents on Entry" default).
- Hold=true -> "On Hold". Taking a document off hold checks its balance:
  Bill: Amount (the control total, CuryOrigDocAmt) must equal sum(Details.Amount) + TaxTotal;
  PurchaseOrder: ControlTotal, when it has a value, must equal OrderTotal; Check: no control total.
  Out of balance -> 422 with the error on Amount / ControlTotal: "The document is out of balance."
  Balanced -> "Pending Approval" when the entity is in ``approval_required``, else "Balanced" (Bill, Check) /
  "Open" (PurchaseOrder). A document that is not on hold stays balanced: an edit that unbalances it fails too.
- ``validate_totals = False`` (Acumatica's "Validate Document Totals on Entry" switched off): a Bill's Amount
  follows its total instead of being checked.
- Approve / reject (a person): "Pending Approval" -> "Balanced"/"Open" or "Rejected".
- Release (Bill, Check): only from "Balanced" -> Bill "Open", Check "Closed"; else "Document Status is invalid
  for processing." (UNCONFIRMED wording). Released documents (and closed orders) take no edits (422,
  UNCONFIRMED wording) and cannot be deleted.
- Line amounts: a Bill line's Amount defaults to ExtendedCost, or Qty x UnitCost; a PO line's ExtendedCost to
  OrderQty x UnitCost. Bill Balance = its total until paid; PO LineTotal = sum(ExtendedCost), OrderTotal =
  LineTotal + TaxTotal. Amounts round to 2 decimals.
"""

from __future__ import annotations

import copy
from typing import Any

from sandboxes.acumatica.model import (
    DEFAULT_TYPE,
    ENTITIES,
    NUMBER_FIELD,
    EntityError,
    ModClock,
    Table,
    new_id,
    shape,
)

HOLD = "On Hold"
BALANCED = "Balanced"
PENDING = "Pending Approval"
REJECTED = "Rejected"
OPEN = "Open"
CLOSED = "Closed"
OUT_OF_BALANCE = "The document is out of balance."
STATUS_INVALID = "Document Status is invalid for processing."
RELEASED_EDIT = "The document is released and cannot be changed."
APPROVED_STATUS = {"Bill": BALANCED, "Check": BALANCED, "PurchaseOrder": OPEN}
RELEASED_STATUS = {"Bill": OPEN, "Check": CLOSED}
FROZEN = {"Bill": {OPEN, CLOSED, "Voided"}, "Check": {OPEN, CLOSED, "Voided"},
          "PurchaseOrder": {CLOSED, "Completed", "Canceled"}}
COMPUTED = {"Status", "Balance", "LineTotal", "OrderTotal", "LastModifiedDateTime", "CreatedDateTime"}
TOLERANCE = 0.005


class Rules:
    """Applies changes to records of one tenant (the caller holds the sandbox lock)."""

    def __init__(self, mod_clock: ModClock):
        self.mod = mod_clock
        self.approval_required: set[str] = set()
        self.validate_totals = True

    # -- saving ------------------------------------------------------------------------------------------
    def save(self, table: Table, existing: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
        """The record after ``changes`` (not stored yet). Raises EntityError (422) when the rules refuse."""
        entity = table.entity
        document = ENTITIES[entity]["document"]
        if existing is None:
            rec: dict[str, Any] = {"id": changes.get("id") or new_id()}
            if document:
                rec.update({"Type": changes.get("Type") or DEFAULT_TYPE[entity], "Hold": True, "Status": HOLD})
                if entity == "Bill":
                    rec.update({"Amount": 0.0, "TaxTotal": 0.0, "ApprovedForPayment": False, "Details": []})
                elif entity == "PurchaseOrder":
                    rec.update({"TaxTotal": 0.0, "Details": []})
                elif entity == "Check":
                    rec.update({"PaymentAmount": 0.0})
            else:
                rec["Status"] = "Active"
        else:
            rec = copy.deepcopy(existing)
            status = existing.get("Status")
            if document and status in FROZEN[entity]:
                touched = [k for k, v in changes.items() if k not in COMPUTED and k not in ("id", "note")
                           and k not in table.key_fields and existing.get(k) != v]
                if touched:
                    raise EntityError(entity, existing, {touched[0]: RELEASED_EDIT})
        shapes = shape(entity)
        computed = COMPUTED if document else {"LastModifiedDateTime", "CreatedDateTime"}
        for name, value in changes.items():
            if name in computed or name == "id":
                continue
            if existing is not None and name in table.key_fields:
                continue
            fs = shapes.get(name)
            if name == "note":
                rec["note"] = value
            elif fs is None:
                continue
            elif fs.kind == "detail":
                rec[name] = _merge_details(rec.get(name) or [], value)
            elif fs.kind == "linked":
                merged = dict(rec.get(name) or {"id": new_id()})
                merged.update({k: v for k, v in value.items() if k != "delete"})
                rec[name] = merged
            else:
                rec[name] = value
        number_field = NUMBER_FIELD[entity]
        if not rec.get(number_field):
            rec[number_field] = ("V" if entity == "Vendor" else "") + table.next_number()
        if document:
            self._totals(entity, rec)
            self._status(entity, existing, rec)
        if existing is None or _differs(existing, rec):
            rec["LastModifiedDateTime"] = self.mod.next()
        return rec

    def _totals(self, entity: str, rec: dict[str, Any]) -> None:
        if entity == "Bill":
            for line in rec.get("Details") or []:
                if line.get("ExtendedCost") is None and line.get("Qty") is not None and line.get("UnitCost") is not None:
                    line["ExtendedCost"] = round(line["Qty"] * line["UnitCost"], 2)
                if line.get("Amount") is None:
                    line["Amount"] = round(float(line.get("ExtendedCost") or 0.0), 2)
            total = round(sum(float(line.get("Amount") or 0.0) for line in rec.get("Details") or [])
                          + float(rec.get("TaxTotal") or 0.0), 2)
            if not self.validate_totals:
                rec["Amount"] = total
            if rec.get("Status") not in FROZEN["Bill"]:
                rec["Balance"] = total
        elif entity == "PurchaseOrder":
            for line in rec.get("Details") or []:
                if line.get("ExtendedCost") is None:
                    line["ExtendedCost"] = round(float(line.get("OrderQty") or 0.0) * float(line.get("UnitCost") or 0.0), 2)
            rec["LineTotal"] = round(sum(float(line.get("ExtendedCost") or 0.0) for line in rec.get("Details") or []), 2)
            rec["OrderTotal"] = round(rec["LineTotal"] + float(rec.get("TaxTotal") or 0.0), 2)

    def balance_error(self, entity: str, rec: dict[str, Any]) -> dict[str, str] | None:
        if entity == "Bill":
            total = round(sum(float(line.get("Amount") or 0.0) for line in rec.get("Details") or [])
                          + float(rec.get("TaxTotal") or 0.0), 2)
            if abs(float(rec.get("Amount") or 0.0) - total) > TOLERANCE:
                return {"Amount": OUT_OF_BALANCE}
        elif entity == "PurchaseOrder":
            control = rec.get("ControlTotal")
            if control is not None and abs(float(control) - float(rec.get("OrderTotal") or 0.0)) > TOLERANCE:
                return {"ControlTotal": OUT_OF_BALANCE}
        return None

    def _status(self, entity: str, existing: dict[str, Any] | None, rec: dict[str, Any]) -> None:
        old_status = existing.get("Status") if existing else None
        if old_status in FROZEN[entity]:
            return
        if rec.get("Hold"):
            rec["Status"] = HOLD
            return
        was_held = existing is None or bool(existing.get("Hold"))
        error = self.balance_error(entity, rec)
        if error:
            raise EntityError(entity, rec, error)
        if was_held:
            rec["Status"] = PENDING if entity in self.approval_required else APPROVED_STATUS[entity]

    # -- people and actions ------------------------------------------------------------------------------
    def approve(self, entity: str, rec: dict[str, Any], approve: bool) -> dict[str, Any]:
        if rec.get("Status") != PENDING:
            raise ValueError(f"{entity} {rec['id']}: {STATUS_INVALID} (status {rec.get('Status')!r})")
        new = copy.deepcopy(rec)
        new["Status"] = APPROVED_STATUS[entity] if approve else REJECTED
        new["LastModifiedDateTime"] = self.mod.next()
        return new

    def release(self, entity: str, rec: dict[str, Any]) -> dict[str, Any]:
        if entity not in RELEASED_STATUS:
            raise ValueError(f"{entity} has no release in the sandbox")
        if rec.get("Status") != BALANCED:
            raise ValueError(STATUS_INVALID)
        new = copy.deepcopy(rec)
        new["Status"] = RELEASED_STATUS[entity]
        if entity == "Check":
            new["UnappliedBalance"] = 0.0
        new["LastModifiedDateTime"] = self.mod.next()
        return new

    @staticmethod
    def deletable(entity: str, rec: dict[str, Any]) -> bool:
        return not (ENTITIES[entity]["document"] and rec.get("Status") in FROZEN[entity])


def _merge_details(rows: list[dict[str, Any]], changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(r) for r in rows]
    by_id = {r["id"]: r for r in out}
    for change in changes:
        target = by_id.get(change.get("id", ""))
        if change.get("delete"):
            if target is not None:
                out.remove(target)
            continue
        if target is None:
            target = {"id": change.get("id") or new_id()}
            out.append(target)
            by_id[target["id"]] = target
        target.update({k: v for k, v in change.items() if k not in ("id", "delete")})
    return out


def _differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = (set(old) | set(new)) - {"LastModifiedDateTime"}
    return any(old.get(k) != new.get(k) for k in keys)
