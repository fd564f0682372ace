"""Acumatica contract-based REST: sign-in (OAuth grant in the vault, or cookie session), client and models
(no Dagster here)."""

from connector_pipelines.systems.acumatica.auth import (
    AcumaticaAuthError,
    AcumaticaCookieSession,
    AcumaticaError,
    AcumaticaTokenProvider,
)
from connector_pipelines.systems.acumatica.client import (
    AcumaticaActionError,
    AcumaticaApiError,
    AcumaticaClient,
    AcumaticaEndpointError,
    AcumaticaValidationError,
    datetimeoffset,
    filter_eq_any,
    literal,
)
from connector_pipelines.systems.acumatica.models import (
    KEY_FIELDS,
    SCREENS,
    field_errors,
    record_url,
    unwrap,
    wrap,
)

__all__ = [
    "KEY_FIELDS",
    "SCREENS",
    "AcumaticaActionError",
    "AcumaticaApiError",
    "AcumaticaAuthError",
    "AcumaticaClient",
    "AcumaticaCookieSession",
    "AcumaticaEndpointError",
    "AcumaticaError",
    "AcumaticaTokenProvider",
    "AcumaticaValidationError",
    "datetimeoffset",
    "field_errors",
    "filter_eq_any",
    "literal",
    "record_url",
    "unwrap",
    "wrap",
]
