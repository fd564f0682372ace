"""What a failure means for retrying it, and the one retry budget every record and delivery shares.

- **Transient** (worth another attempt later): HTTP 408, 409, 423, 429 and 5xx (after the HTTP client's
  own in-call retries), network errors, a database that refused a transaction for a transient reason.
- **Permanent** (another attempt gives the same answer; a person must act): any other 4xx, a
  validation error, a configuration error, a quarantined record.

Retry layers (DAGSTER-STYLE rule 7), one budget each, never multiplied:
1. inside one call: the HTTP client (Retry-After honoured, bounded attempts and total wait);
2. across runs: a failed record (the ledger) or a failed delivery batch (the inbox) is retried by its
   sensor at ``next_at(attempts)`` — exponential backoff from ``base_s``, at most ``max_attempts`` —
   and then parked for a person (a ledger row without ``retry_after``; an inbox dead letter);
3. Dagster's own run retries only re-launch a run whose *worker* died (``retry_on_asset_or_op_failure:
   false``); ops raise ``Failure(allow_retries=False)``, assets carry no RetryPolicy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from connector_pipelines.core.db import transient_db_error, utcnow
from connector_pipelines.core.http import ApiError

TRANSIENT_STATUS = frozenset({408, 409, 423, 429})


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status in TRANSIENT_STATUS
    if isinstance(exc, httpx.TransportError):
        return True
    return transient_db_error(exc)


def describe(exc: BaseException) -> str:
    """One line for a ledger row, an inbox row or run metadata (ApiError already carries no secrets)."""
    return f"{type(exc).__name__}: {exc}"[:2000] if not isinstance(exc, ApiError) else str(exc)[:2000]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


@dataclass(frozen=True)
class RetryBudget:
    """Attempt n (1-based) failed: the next one is due ``base_s * factor**(n-1)`` later (capped), until
    ``max_attempts`` attempts have failed."""

    base_s: float = 60.0
    factor: float = 2.0
    cap_s: float = 3600.0
    max_attempts: int = 5

    @classmethod
    def from_env(cls) -> RetryBudget:
        """CONNECTOR_RETRY_BASE_S (60), CONNECTOR_RETRY_MAX_ATTEMPTS (5), CONNECTOR_RETRY_CAP_S (3600)."""
        return cls(base_s=_env_float("CONNECTOR_RETRY_BASE_S", 60.0),
                   cap_s=_env_float("CONNECTOR_RETRY_CAP_S", 3600.0),
                   max_attempts=int(_env_float("CONNECTOR_RETRY_MAX_ATTEMPTS", 5)))

    def next_at(self, failed_attempts: int, now: datetime) -> datetime | None:
        """When to try again after ``failed_attempts`` failures; None = give up (park it for a person)."""
        if failed_attempts >= self.max_attempts:
            return None
        delay = min(self.cap_s, self.base_s * self.factor ** max(0, failed_attempts - 1))
        return now + timedelta(seconds=delay)

    def next_from_now(self, failed_attempts: int) -> datetime | None:
        """``next_at`` counted from this moment (what the inbox and ledger store as the next attempt)."""
        return self.next_at(failed_attempts, utcnow())


@dataclass(frozen=True)
class WriteSettings:
    """How the target writer behaves under concurrency and search lag.

    ``search_lag_bound_s``: the longest the target's search index may lag behind a create (Jira:
    "Recent updates might not be immediately visible"). A create whose answer was lost is re-created
    only after a search made at least this long after the create could have happened.
    ``claim_wait_s``: how long a writer waits for records another writer holds before leaving them to it.
    ``lease_ttl_s``: a writer's claim on a record lives this long without a heartbeat.
    ``reconcile_settle_s``: a document the source changed less than this long ago and without a target record
    yet is *in flight* for reconciliation (its webhook run or the next poll writes it), not missing; the default
    is the poll interval (15 minutes), so a lapsed webhook is not a false alarm either.
    """

    search_lag_bound_s: float = 60.0
    claim_wait_s: float = 30.0
    lease_ttl_s: float = 60.0
    retry: RetryBudget = RetryBudget()
    reconcile_settle_s: float = 900.0

    @classmethod
    def from_env(cls) -> WriteSettings:
        """CONNECTOR_SEARCH_LAG_BOUND_S (60), CONNECTOR_CLAIM_WAIT_S (30), CONNECTOR_LEASE_TTL_S (60),
        CONNECTOR_RECONCILE_SETTLE_S (900)."""
        return cls(search_lag_bound_s=_env_float("CONNECTOR_SEARCH_LAG_BOUND_S", 60.0),
                   claim_wait_s=_env_float("CONNECTOR_CLAIM_WAIT_S", 30.0),
                   lease_ttl_s=_env_float("CONNECTOR_LEASE_TTL_S", 60.0),
                   retry=RetryBudget.from_env(),
                   reconcile_settle_s=_env_float("CONNECTOR_RECONCILE_SETTLE_S", 900.0))
