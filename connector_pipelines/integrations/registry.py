"""The one registry of systems (DESIGN.md §6): the only module that names every system.

Each entry says what a system offers a pair — as a source (windowed polling on a modified timestamp,
push subscriptions the connector must renew) and/or as a target — which Dagster resource serves it,
its display label and kind, the concurrency pool its writers share, and the modules holding its
adapters (imported on first use: a code location that runs only bc_jira never imports Acumatica's
client). The definition schema asks this module which source names exist and which target settings
are valid (a discriminated union on ``system``); the Dagster factories ask it for resource keys, kinds
and pools; nothing else branches on a system's name.

Adding a system = its package under ``systems/``, an adapter module with ``from_resources(integration,
resources)``, and one entry here (plus, for a target, its settings model below).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from connector_pipelines.integrations.definition import IntegrationDefinition


@dataclass(frozen=True)
class SystemEntry:
    """What one system offers the flow machinery."""

    name: str
    label: str                                 # what a person calls it ("Business Central")
    resource_key: str                          # the Dagster resource serving it
    source_adapter: str | None = None          # module with from_resources(integration, resources) -> SourceAdapter
    target_adapter: str | None = None          # module with from_resources(integration, resources, run_id) -> writer
    windowed_polling: bool = False             # as a source: a modified timestamp to poll hourly windows on
    subscriptions: bool = False                # as a source: push subscriptions the connector creates and renews
    resolutions: tuple[str, ...] = ()          # as a source: what a resolution in the target can do here
    writes_fields: bool = False                # as a source: takes write-backs of fields (write_fields)
    pool: str | None = None                    # as a target: the Dagster pool its writers share (one rate budget)
    field_kinds: tuple[str, ...] = ()          # as a target: the kinds of mapped field its codecs write


SYSTEMS: dict[str, SystemEntry] = {e.name: e for e in (
    # BC: lastModifiedDateTime on every API entity; webhook subscriptions expire after 3 days.
    SystemEntry("business_central", "Business Central", "business_central",
                source_adapter="connector_pipelines.integrations.sources.business_central",
                windowed_polling=True, subscriptions=True,
                resolutions=("record_outcome", "post_purchase_invoice", "unblock_vendor")),
    # F&O: data entities expose no common modified timestamp; business events are pushed to an endpoint an
    # administrator configures in F&O (nothing to renew). A window = the events received in it.
    SystemEntry("finance_operations", "Dynamics 365 Finance & Operations", "finance_operations",
                source_adapter="connector_pipelines.integrations.sources.finance_operations",
                resolutions=("record_outcome", "source_action"), writes_fields=True),
    # Acumatica: LastModifiedDateTime on Bill, Check, PurchaseOrder, Vendor (endpoint 24.200.001); push
    # notifications are an accelerator an administrator configures in Acumatica (nothing to renew).
    SystemEntry("acumatica", "Acumatica", "acumatica",
                source_adapter="connector_pipelines.integrations.sources.acumatica", windowed_polling=True,
                resolutions=("record_outcome", "source_action", "update_fields")),
    SystemEntry("jira", "Jira", "jira", target_adapter="connector_pipelines.integrations.jira_target",
                pool="jira_site", field_kinds=("text", "number", "adf")),
    # monday.com: items on boards; the field kinds are its column types the codecs write (systems.monday.codecs).
    SystemEntry("monday", "Monday.com", "monday", target_adapter="connector_pipelines.integrations.monday_target",
                pool="monday_account",
                field_kinds=("text", "long_text", "numbers", "status", "date", "link", "dropdown", "board_relation")),
)}


class UnknownSystem(LookupError):
    pass


def system(name: str) -> SystemEntry:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise UnknownSystem(f"unknown system {name!r} (known: {', '.join(sorted(SYSTEMS))})") from None


def source_names() -> list[str]:
    return sorted(n for n, e in SYSTEMS.items() if e.source_adapter)


def target_names() -> list[str]:
    return sorted(n for n, e in SYSTEMS.items() if e.target_adapter)


def make_source(integration: IntegrationDefinition, resources: Any):
    """The source adapter for ``integration.source``, built from this run's resources."""
    entry = system(integration.source)
    if not entry.source_adapter:
        raise UnknownSystem(f"{integration.source!r} is not a source (sources: {', '.join(source_names())})")
    return import_module(entry.source_adapter).from_resources(integration, resources)


def target_module(name: str) -> Any:
    """The adapter module of target ``name``: ``from_resources`` always; ``resolution_processor``,
    ``inbox_row_filter``, ``RESOLUTION_EVENTS`` when a person's change in the target acts back on the source;
    ``ensure_webhook`` when the connector keeps a webhook registered there."""
    entry = system(name)
    if not entry.target_adapter:
        raise UnknownSystem(f"{name!r} is not a target (targets: {', '.join(target_names())})")
    return import_module(entry.target_adapter)


def make_target(integration: IntegrationDefinition, resources: Any, run_id: str | None):
    """The target writer for ``integration.target.system``, built from this run's resources."""
    return target_module(integration.target.system).from_resources(integration, resources, run_id)


# -- target settings: one model per target system, discriminated on ``system`` -------------------------
class JiraTarget(BaseModel):
    """Where a pair's records become Jira issues, and how a person's resolution is recognised."""

    model_config = ConfigDict(extra="forbid")

    system: Literal["jira"] = "jira"
    project_key: str
    external_id_field: str = Field("ERP External ID", description="Name of the Jira text custom field holding the source key")
    done_status_category: str = "done"
    resolution_comment_prefix: str | None = Field("Resolution:", description=(
        "A person's comment starting with this text resolves the issue like a done transition "
        "(the rest of the comment is the outcome recorded at the source); None = transitions only"))


class MondayTarget(BaseModel):
    """Where a pair's records become items on monday.com boards (one board per entity)."""

    model_config = ConfigDict(extra="forbid")

    system: Literal["monday"]
    boards: dict[str, str] = Field(description="Entity name -> board id (checked against the live board by ping)")
    groups: dict[str, str] = Field(default_factory=dict, description="Entity name -> group id (default: the board's first)")
    external_id_column: str = Field("external_id", description="Text column holding the source key (found before create)")
    link_column: str | None = Field(None, description="Link column receiving the link back to the source record")
    account_url: str | None = Field(None, description="https://<account>.monday.com, for links to items")


TARGET_MODELS: dict[str, type[BaseModel]] = {"jira": JiraTarget, "monday": MondayTarget}


def _target_config() -> Any:
    """The definition's ``target`` type: the union of the registered target settings. Each model pins its
    ``system`` with a Literal (Jira's defaults to "jira", as the first pairs were written), so exactly one
    member accepts a given target; a plain union (not a callable discriminator) because the Dagster component
    that reads defs.yaml adds template strings to every field's type."""
    models = tuple(TARGET_MODELS.values())
    return models[0] if len(models) == 1 else Union[models]  # noqa: UP007 - built from the registry's tuple


TargetConfig = _target_config()

__all__ = ["SYSTEMS", "JiraTarget", "MondayTarget", "SystemEntry", "TargetConfig", "UnknownSystem", "make_source", "make_target",
           "source_names", "system", "target_names"]
