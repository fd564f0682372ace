"""Dynamics 365 Finance & Operations: OData v4 client and business-event models (no Dagster)."""

from connector_pipelines.systems.finance_operations.client import FinanceOperationsClient
from connector_pipelines.systems.finance_operations.models import BusinessEvent, EntitySetInfo, ODataMetadata

__all__ = ["BusinessEvent", "EntitySetInfo", "FinanceOperationsClient", "ODataMetadata"]
