"""F&O models: the business-event envelope (the OData $metadata model lives in ``core.odata``).

Business events (API-FACTS §1.4): a stub envelope — BusinessEventId, ControlNumber ("an upwardly
increasing number … there can be gaps"), EventId, EventTime (WCF ``/Date(ms)/``) and, in newer
payloads, EventTimeIso8601 and BusinessEventLegalEntity (older: LegalEntity), MajorVersion /
MinorVersion — then the event's own fields (the document's keys, never the full record).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from connector_pipelines.core.odata import EntitySetInfo, ODataMetadata

__all__ = ["BusinessEvent", "EntitySetInfo", "ODataMetadata"]

ENVELOPE_FIELDS = {"BusinessEventId", "BusinessEventLegalEntity", "LegalEntity", "ContextRecordSubject",
                   "ControlNumber", "EventId", "EventTime", "EventTimeIso8601", "InitiatingUserAADObjectId",
                   "MajorVersion", "MinorVersion", "ParentContextRecordSubjects"}
WCF_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


class BusinessEvent(BaseModel):
    """One F&O business-event envelope, parsed (the raw payload stays in the inbox)."""

    model_config = ConfigDict(frozen=True)

    business_event_id: str
    control_number: int
    event_id: str | None = None
    event_time: datetime | None = None
    legal_entity: str = ""
    major_version: int | None = None
    minor_version: int | None = None
    fields: dict[str, Any] = {}

    @property
    def data_area_id(self) -> str:
        return self.legal_entity.lower()

    @classmethod
    def parse(cls, payload: Any) -> BusinessEvent:
        if not isinstance(payload, dict):
            raise ValueError("a business event is a JSON object")  # noqa: TRY004 - callers answer 400 on ValueError
        event_id = payload.get("BusinessEventId")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("BusinessEventId is missing")
        control = payload.get("ControlNumber")
        if isinstance(control, bool) or not isinstance(control, int | str) or not str(control).strip().isdigit():
            raise ValueError(f"{event_id}: ControlNumber is missing or not an integer")
        legal = payload.get("BusinessEventLegalEntity") or payload.get("LegalEntity") or ""
        return cls(business_event_id=event_id, control_number=int(control), event_id=payload.get("EventId"),
                   event_time=_event_time(payload), legal_entity=str(legal),
                   major_version=_int(payload.get("MajorVersion")), minor_version=_int(payload.get("MinorVersion")),
                   fields={k: v for k, v in payload.items() if k not in ENVELOPE_FIELDS})


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _event_time(payload: dict[str, Any]) -> datetime | None:
    iso = payload.get("EventTimeIso8601")
    if isinstance(iso, str) and iso:
        text = iso.replace("Z", "+00:00")
        m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", text)   # 7 fractional digits -> 6
        if m:
            text = f"{m.group(1)}.{m.group(2)[:6]}{m.group(3)}"
        try:
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    wcf = payload.get("EventTime")
    if isinstance(wcf, str):
        m = WCF_DATE.match(wcf.strip())
        if m:
            return datetime.fromtimestamp(int(m.group(1)) / 1000, tz=UTC)
    return None
