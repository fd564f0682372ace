"""monday.com GraphQL API: raw-token auth (vault), client, board/item models, column-value codecs and the
process-wide rate governor (no Dagster here). See docs/monday.md."""

from connector_pipelines.systems.monday.auth import (
    DEFAULT_API_VERSION,
    DEFAULT_CREDENTIAL,
    MondayTokenError,
    StaticToken,
    TokenSource,
    VaultToken,
    fingerprint,
)
from connector_pipelines.systems.monday.client import (
    DEFAULT_API_URL,
    CreatedItem,
    MondayClient,
    with_complexity,
)
from connector_pipelines.systems.monday.codecs import (
    CODECS,
    Codec,
    ColumnCodecError,
    Raw,
    UnsupportedColumnType,
    codec_for,
    decode_column_value,
    encode_column_values,
    raw,
)
from connector_pipelines.systems.monday.errors import (
    MondayApiError,
    MondayAuthError,
    MondayBoardLocked,
    MondayColumnValueError,
    MondayConfigError,
    MondayCursorExpired,
    MondayError,
    MondayNotFound,
    MondayRateLimited,
    classify,
)
from connector_pipelines.systems.monday.governor import RateGovernor, governor_for, reset_governors
from connector_pipelines.systems.monday.models import Board, Column, Group, flat_item

__all__ = [
    "CODECS",
    "DEFAULT_API_URL",
    "DEFAULT_API_VERSION",
    "DEFAULT_CREDENTIAL",
    "Board",
    "Codec",
    "Column",
    "ColumnCodecError",
    "CreatedItem",
    "Group",
    "MondayApiError",
    "MondayAuthError",
    "MondayBoardLocked",
    "MondayClient",
    "MondayColumnValueError",
    "MondayConfigError",
    "MondayCursorExpired",
    "MondayError",
    "MondayNotFound",
    "MondayRateLimited",
    "MondayTokenError",
    "RateGovernor",
    "Raw",
    "StaticToken",
    "TokenSource",
    "UnsupportedColumnType",
    "VaultToken",
    "classify",
    "codec_for",
    "decode_column_value",
    "encode_column_values",
    "fingerprint",
    "flat_item",
    "governor_for",
    "raw",
    "reset_governors",
    "with_complexity",
]
