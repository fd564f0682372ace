"""Source adapters: how an integration reads exceptions from (and acts back on) one ERP.

``ADAPTERS`` is the one registry from a definition's ``source`` to the adapter that serves it: each
entry builds the adapter from the run's resources (the source's own resource is keyed by the source's
name; an adapter may also use the store, e.g. for a vault-held grant). A new ERP is one module here with
a ``from_resources(integration, resources)`` and one line below; nothing else in the factory or the sync
engine names a system.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector_pipelines.integrations.definition import IntegrationDefinition
    from connector_pipelines.integrations.sources.base import SourceAdapter

# source name -> module holding its adapter's ``from_resources`` (imported on first use: a code
# location that runs only bc_jira never imports the other systems' clients).
ADAPTERS: dict[str, str] = {
    "business_central": "connector_pipelines.integrations.sources.business_central",
    "finance_operations": "connector_pipelines.integrations.sources.finance_operations",
    "acumatica": "connector_pipelines.integrations.sources.acumatica",
}


class UnknownSource(LookupError):
    pass


def make_source(integration: IntegrationDefinition, resources: Any) -> SourceAdapter:
    """The adapter for ``integration.source``, built from this run's resources."""
    module = ADAPTERS.get(integration.source)
    if module is None:
        raise UnknownSource(f"no source adapter for {integration.source!r} (known: {', '.join(sorted(ADAPTERS))})")
    return import_module(module).from_resources(integration, resources)
