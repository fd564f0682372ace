"""Business Central API v2.0 (OData) client and models (no Dagster here)."""

from connector_pipelines.systems.business_central.client import BusinessCentralClient, odata_datetime
from connector_pipelines.systems.business_central.models import (
    Notification,
    PurchaseInvoice,
    PurchaseOrder,
    Subscription,
    Vendor,
)

__all__ = ["BusinessCentralClient", "Notification", "PurchaseInvoice", "PurchaseOrder", "Subscription", "Vendor",
           "odata_datetime"]
