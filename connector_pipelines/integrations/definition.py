"""The declarative definition of one integration pair: what to watch, what counts as an exception,
where it goes in the target, and what resolving it does at the source.

This is the schema of ``defs/<pair>/defs.yaml`` (the Dagster component's attributes are exactly
these fields). It is plain pydantic so it is validated and unit-tested without Dagster.
"""

from __future__ import annotations

import os
import string
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector_pipelines.integrations import registry
from connector_pipelines.integrations.registry import TargetConfig

Op = Literal["eq", "ne", "in", "not_in", "older_than_days"]


class ExceptionRule(BaseModel):
    """One condition a source record must meet to be an exception (all rules of an entity must hold)."""

    model_config = ConfigDict(extra="forbid")

    field: str
    op: Op
    value: Any

    @model_validator(mode="after")
    def _value_shape(self) -> ExceptionRule:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"rule on '{self.field}': op '{self.op}' needs a list value")
        if self.op == "older_than_days" and not isinstance(self.value, int | float):
            raise ValueError(f"rule on '{self.field}': op 'older_than_days' needs a number of days")
        return self

    def matches(self, record: dict[str, Any], now: datetime | None = None) -> bool:
        actual = record.get(self.field)
        if self.op == "eq":
            return actual == self.value
        if self.op == "ne":
            return actual != self.value
        if self.op == "in":
            return actual in self.value
        if self.op == "not_in":
            return actual not in self.value
        # older_than_days: the field is a date or datetime string
        if not actual:
            return False
        moment = parse_moment(str(actual))
        return moment < (now or datetime.now(UTC)) - timedelta(days=float(self.value))


def parse_moment(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    moment = datetime.fromisoformat(text) if "T" in text else datetime.fromisoformat(text + "T00:00:00+00:00")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class TargetField(BaseModel):
    """One mapped target field: its name at the target (a Jira field's *name*, whose id is discovered per
    site; a Monday column id), a template over the source record, and the kind of value the target's codec
    writes (the target system's kinds are in integrations.registry: Jira text/number/adf, …)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    template: str
    kind: str = "text"
    relates_to: str | None = Field(None, description=(
        "A link to another entity's target record of the same pair (e.g. an invoice item to its vendor's item): "
        "the template renders that entity's record id; the value written is its target record"))


# What a resolution in the target (Done in Jira) does at the source: one of the actions the source system
# offers (integrations.registry: SystemEntry.resolutions). ``source_action`` (call the document's action, e.g.
# an F&O bound OData action or Acumatica's ReleaseBill) and ``update_fields`` (write fields, e.g. take a purchase
# order off hold) are not idempotent: both need a ``state_check`` and act only while the document is still due.

class WriteBack(BaseModel):
    """A person's change of one target field (a Monday column) written to the system of record's field, after
    re-reading both: the item through the target's API (the webhook is only a signal) and the record at the
    source; a value the connector itself wrote is never written back; what the source refuses (a posted
    invoice, a read-only field) is answered on the target record, saying why."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="The target field a person changes (a Monday column id)")
    field: str = Field(description="The writable source field that receives the value")


class StateCheck(BaseModel):
    """Before a non-idempotent action: the document field that says whether it is still due."""

    model_config = ConfigDict(extra="forbid")

    field: str
    due: list[str] = Field(description="Values in which the action is still due")
    already: list[str] = Field(default_factory=list, description="Values meaning someone already did it")


class LineSummary(BaseModel):
    """Summarise the document's lines (read in the same call with a one-level $expand) into
    ``LineCount`` and ``LinesTotal`` on the record, for headers that carry no total of their own."""

    model_config = ConfigDict(extra="forbid")

    navigation: str = Field(description="Navigation property of the header holding its lines")
    amount_field: str = Field(description="Line field summed into LinesTotal")


class RecentWindow(BaseModel):
    """Documents dated within the last ``days`` days on ``field`` (a date or date-time field)."""

    model_config = ConfigDict(extra="forbid")

    field: str
    days: int

    @field_validator("days")
    @classmethod
    def _days(cls, v: int) -> int:
        if not 1 <= v <= 366:
            raise ValueError(f"recent.days must be between 1 and 366, not {v}")
        return v


class CatchUp(BaseModel):
    """For an entity announced only by events: how to find, *without* the events, the documents that
    should have an issue — so a lost event fails the reconcile check and the repair opens its issue.

    ``rules`` (the documents' state) and/or ``recent`` (a date window) describe a read of the source;
    ``unavailable`` says why no read can find them (the check then warns that it cannot verify)."""

    model_config = ConfigDict(extra="forbid")

    rules: list[ExceptionRule] = Field(default_factory=list)
    recent: RecentWindow | None = None
    unavailable: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> CatchUp:
        readable = bool(self.rules or self.recent)
        if readable == bool(self.unavailable):
            raise ValueError("catch_up needs rules and/or recent (a read of the source), or unavailable: <why>")
        return self

    @property
    def readable(self) -> bool:
        return self.unavailable is None

    def matches(self, record: dict[str, Any], now: datetime | None = None) -> bool:
        if not all(rule.matches(record, now) for rule in self.rules):
            return False
        if self.recent is None:
            return True
        value = record.get(self.recent.field)
        return bool(value) and parse_moment(str(value)) >= self.since(now)

    def since(self, now: datetime | None = None) -> datetime:
        assert self.recent is not None
        today = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=self.recent.days)


class EntitySync(BaseModel):
    """One document set of the source that becomes issues in the target."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Asset name, in the business's words, e.g. purchase_invoices_awaiting_review")
    description: str
    entity_set: str = Field(description="The source API's collection, e.g. purchaseInvoices")
    document_label: str = Field(description="What a person calls one record, e.g. 'Purchase invoice'")
    webhook: bool = Field(False, description="The source notifies changes (subscription); polling still catches up")
    mirror: bool = Field(False, description=(
        "Every record of the set is kept as one target record (master data, a document board): read in full on "
        "the pair's mirror schedule (one partition per legal entity), and promptly where events announce them"))
    read_only: bool = Field(False, description=(
        "The pair never writes to this set at the source (posted ledger entries, a data entity F&O marks "
        "IsReadOnly): no write_back, outcome_field, action, updates or state_check; a person's change of its "
        "target records is never written back"))
    exception: list[ExceptionRule] = Field(default_factory=list)
    issue_type: str = "Task"
    summary: str
    fields: list[TargetField] = Field(default_factory=list)
    context: list[str] = Field(default_factory=list, description="Record fields shown in the issue description")
    resolution: str = Field("record_outcome", description="What resolving in the target does at the source "
                                                          "(one of the source system's resolutions)")
    project_key: str | None = Field(None, description="Jira project for this entity (default: target.project_key)")
    # -- event-driven sources (F&O business events) ---------------------------------------------------
    business_event: str | None = Field(None, description="F&O BusinessEventId announcing a document of this set")
    push_query: str | None = Field(None, description=(
        "Acumatica push notification Query (the generic inquiry or built-in definition) announcing changed "
        "documents of this set; polling still catches up"))
    event_keys: dict[str, str] = Field(default_factory=dict, description=(
        "Entity field <- event / notification row field: the fields that find the document through the API "
        "(F&O: dataAreaId comes from the event's legal entity; Acumatica: default = the entity's key fields, "
        "same names)"))
    lines: LineSummary | None = None
    menu_item: str | None = Field(None, description="F&O display menu item for the link back to the record")
    catch_up: CatchUp | None = Field(None, description=(
        "Event-only entities: the read that finds the documents an event should have announced"))
    state: str | None = Field(None, description=(
        "Template of the document's state as a person reads it, e.g. '{Status}': when it changes on a "
        "document with an issue, the issue is updated and gets one comment saying so"))
    write_back: list[WriteBack] = Field(default_factory=list, description=(
        "Target fields whose change by a person is written back to the source record"))
    # -- resolution settings ---------------------------------------------------------------------------
    state_check: StateCheck | None = Field(None, description=(
        "source_action / update_fields: act only while this field says the document is due"))
    action: str | None = Field(None, description=(
        "source_action: the document's action at the source (F&O: the bound OData action "
        "Microsoft.Dynamics.DataEntities.<name>; Acumatica: an action of the endpoint, e.g. ReleaseBill)"))
    updates: dict[str, Any] = Field(default_factory=dict, description=(
        "update_fields: field -> value written to the document (e.g. Hold: false)"))
    outcome_field: str | None = Field(None, description=(
        "record_outcome: a writable text field of the document that receives the Jira outcome"))

    @field_validator("name")
    @classmethod
    def _snake(cls, v: str) -> str:
        if not v.replace("_", "").isalnum() or v.lower() != v:
            raise ValueError(f"entity name '{v}' must be snake_case (it becomes an asset key)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EntitySync:
        if not self.exception and not self.business_event and not self.mirror:
            raise ValueError(f"entity '{self.name}' needs at least one exception rule (otherwise every record is "
                             "an exception), unless a business event announces each exception or it is a mirror")
        if self.mirror and self.exception:
            raise ValueError(f"entity '{self.name}': a mirror keeps every record; drop its exception rules")
        if self.business_event and not self.exception and not self.mirror and self.catch_up is None:
            raise ValueError(f"entity '{self.name}' is announced only by events: declare catch_up (a read that finds "
                             "its documents without the events, so a lost event is noticed) or catch_up.unavailable")
        if self.business_event and not self.event_keys:
            raise ValueError(f"entity '{self.name}': business_event needs event_keys (entity field <- event field)")
        if self.resolution == "source_action" and not (self.action and self.state_check):
            raise ValueError(f"entity '{self.name}': resolution source_action needs action and "
                             "state_check (the action is not idempotent: read the state first)")
        if self.resolution == "update_fields" and not (self.updates and self.state_check):
            raise ValueError(f"entity '{self.name}': resolution update_fields needs updates and "
                             "state_check (the write is not idempotent: read the state first)")
        if self.read_only:
            writes = [name for name, value in (("write_back", self.write_back), ("outcome_field", self.outcome_field),
                                               ("action", self.action), ("updates", self.updates),
                                               ("state_check", self.state_check)) if value]
            if self.resolution != "record_outcome":
                writes.append(f"resolution {self.resolution}")
            if writes:
                raise ValueError(f"entity '{self.name}' is read_only: the source is never written, drop "
                                 f"{', '.join(writes)}")
        if self.push_query and self.business_event:
            raise ValueError(f"entity '{self.name}': one announcement per entity: business_event or push_query")
        return self

    def is_exception(self, record: dict[str, Any], now: datetime | None = None) -> bool:
        return all(rule.matches(record, now) for rule in self.exception)

    def template_fields(self) -> set[str]:
        names: set[str] = set()
        for tpl in [self.summary, *(f.template for f in self.fields), *([self.state] if self.state else [])]:
            names |= {n for _, n, _, _ in string.Formatter().parse(tpl) if n}
        return names | set(self.context) | {r.field for r in self.exception}

    @property
    def event_driven(self) -> bool:
        return self.business_event is not None

    @property
    def event_only(self) -> bool:
        """No state of the document defines the exception: every announced document gets an issue."""
        return not self.exception


class PollingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    go_live: str = Field(description="First polled window, ISO date (partitions start here)")
    cron: str = "*/15 * * * *"
    timezone: str = "UTC"

    @field_validator("go_live")
    @classmethod
    def _iso_date(cls, v: str) -> str:
        date.fromisoformat(v)
        return v

    def first_window(self) -> str:
        """The start of the first hourly window, as Dagster's partitions take it ("YYYY-MM-DD-HH:MM"):
        ``go_live`` at midnight, or ``CONNECTOR_GO_LIVE`` where the deployment sets one for every pair (a date
        or "YYYY-MM-DD-HH:00"; the demo sets the hour it starts, so its partition bars hold its own hours
        only, not a month of windows that never ran)."""
        override = os.environ.get("CONNECTOR_GO_LIVE", "").strip()
        if not override:
            return f"{self.go_live}-00:00"
        try:
            if len(override) == 10:
                return f"{date.fromisoformat(override).isoformat()}-00:00"
            return datetime.strptime(override, "%Y-%m-%d-%H:%M").strftime("%Y-%m-%d-%H:%M")
        except ValueError:
            raise ValueError(f"CONNECTOR_GO_LIVE={override!r} is neither YYYY-MM-DD nor YYYY-MM-DD-HH:00") from None


class IntegrationDefinition(BaseModel):
    """bc_jira, d365_jira, acumatica_jira, ...: one source, one target, the entities between them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(description="The source system (a name in integrations.registry with a source adapter)")
    company: str = Field(description="Source company / legal entity the integration watches")
    target: TargetConfig = Field(description="The target system's settings, chosen by their `system` (default jira)")
    polling: PollingSettings
    entities: list[EntitySync]
    owners: list[str] = Field(default_factory=list)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in registry.source_names():
            raise ValueError(f"unknown source system {v!r}; sources are {', '.join(registry.source_names())}")
        return v

    @model_validator(mode="after")
    def _unique_entities(self) -> IntegrationDefinition:
        if not self.entities:
            raise ValueError(f"integration '{self.name}' declares no entities")
        names = [e.name for e in self.entities]
        if len(names) != len(set(names)):
            raise ValueError(f"entity names must be unique in integration '{self.name}': {names}")
        if not self.capabilities.windowed_polling:
            polled = [e.name for e in self.entities if not e.event_driven and not e.mirror]
            if polled:
                raise ValueError(f"{self.source} has no windowed polling: entities {polled} need a business_event "
                                 "(or mirror: true, a full read on a schedule)")
        events = [e.business_event for e in self.entities if e.business_event]
        if len(events) != len(set(events)):
            raise ValueError(f"one business event may announce one entity only in '{self.name}': {events}")
        queries = [e.push_query for e in self.entities if e.push_query]
        if len(queries) != len(set(queries)):
            raise ValueError(f"one push notification query may announce one entity only in '{self.name}': {queries}")
        if not self.capabilities.writes_fields:
            writing = [e.name for e in self.entities if e.write_back]
            if writing:
                raise ValueError(f"{self.capabilities.label} takes no write-back of fields yet: entities {writing}")
        offered = self.capabilities.resolutions
        for e in self.entities:
            if e.resolution not in offered:
                raise ValueError(f"entity '{e.name}': resolution {e.resolution!r} is not one {self.capabilities.label} "
                                 f"offers ({', '.join(offered)})")
        kinds = self.target_system.field_kinds
        names = {e.name for e in self.entities}
        for e in self.entities:
            for f in e.fields:
                if f.relates_to is not None and f.relates_to not in names:
                    raise ValueError(f"entity '{e.name}', field '{f.name}': relates_to {f.relates_to!r} is not an "
                                     f"entity of '{self.name}' ({', '.join(sorted(names))})")
                if f.kind not in kinds:
                    raise ValueError(f"entity '{e.name}', field '{f.name}': kind {f.kind!r} is not a "
                                     f"{self.target_system.label} field kind ({', '.join(kinds)})")
        return self

    @property
    def capabilities(self) -> registry.SystemEntry:
        """What the source system offers (windowed polling, subscriptions) and its label: the registry's entry."""
        return registry.system(self.source)

    @property
    def target_system(self) -> registry.SystemEntry:
        return registry.system(self.target.system)

    def project_for(self, entity: EntitySync) -> str:
        return entity.project_key or self.target.project_key

    def project_keys(self) -> list[str]:
        return sorted({self.project_for(e) for e in self.entities})

    def entity(self, name: str) -> EntitySync:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(f"integration '{self.name}' has no entity '{name}'")

    def entity_for_set(self, entity_set: str) -> list[EntitySync]:
        return [e for e in self.entities if e.entity_set == entity_set]


class _Formatted(dict):
    """A record's values as the templates see them, formatted only when a template asks for them (a
    template names a few of a record's ~50 fields); a missing field is empty."""

    __slots__ = ("record",)

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        self.record = record

    def __missing__(self, key: str) -> str:
        return format_value(self.record.get(key))


_FORMATTER = string.Formatter()


def render(template: str, record: dict[str, Any]) -> str:
    """Fill a template from a record; missing fields render empty, numbers keep two decimals."""
    return _FORMATTER.vformat(template, (), _Formatted(record)).strip()


def format_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float | Decimal):
        return f"{v:,.2f}"
    return str(v)


def to_number(text: str) -> float | None:
    try:
        return float(Decimal(text.replace(",", "")))
    except (InvalidOperation, ValueError):
        return None
