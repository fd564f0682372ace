"""Business Central API v2.0 shapes the product reads (pydantic; unknown properties are kept)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _BCModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    etag: str | None = Field(default=None, alias="@odata.etag")


class Vendor(_BCModel):
    id: str
    number: str | None = None
    displayName: str | None = None
    blocked: str | None = None           # NAV.vendorBlocked: " ", "Payment", "All"
    currencyCode: str | None = None
    balance: float | None = None
    lastModifiedDateTime: datetime | None = None


class PurchaseInvoice(_BCModel):
    id: str
    number: str | None = None
    invoiceDate: str | None = None
    postingDate: str | None = None
    dueDate: str | None = None
    vendorInvoiceNumber: str | None = None
    vendorId: str | None = None
    vendorNumber: str | None = None
    vendorName: str | None = None
    currencyCode: str | None = None
    totalAmountIncludingTax: float | None = None
    status: str | None = None            # " ", Draft, In Review, Open, Paid, Canceled, Corrective
    lastModifiedDateTime: datetime | None = None


class PurchaseOrder(_BCModel):
    id: str
    number: str | None = None
    orderDate: str | None = None
    vendorId: str | None = None
    vendorNumber: str | None = None
    vendorName: str | None = None
    currencyCode: str | None = None
    totalAmountIncludingTax: float | None = None
    fullyReceived: bool | None = None
    status: str | None = None            # Draft, In Review, Open
    lastModifiedDateTime: datetime | None = None


class Subscription(_BCModel):
    subscriptionId: str
    notificationUrl: str
    resource: str
    clientState: str | None = None
    expirationDateTime: datetime | None = None
    lastModifiedDateTime: datetime | None = None


class Notification(BaseModel):
    """One entry of a notification POST's ``value`` array."""

    model_config = ConfigDict(extra="allow")

    subscriptionId: str
    clientState: str | None = None
    expirationDateTime: datetime | None = None
    resource: str
    changeType: str                      # created | updated | deleted | collection
    lastModifiedDateTime: datetime | None = None
