"""monday.com's limits (API-FACTS §6.5; developer.monday.com/api-reference/docs/rate-limits, page of 2026-09).

- Complexity per query: ``max_query_complexity`` (5,000,000). Over it -> HTTP 200, ``errors[]`` with
  ``Query has complexity of N, which exceeds max complexity of M`` and code ``maxComplexityExceeded`` (graphql-ruby
  wording, UNCONFIRMED), nothing runs.
- Complexity budget per token and minute (a sliding 60 s window): a personal token ``complexity_per_minute``
  (10,000,000, reads and writes combined); an app token 5,000,000 for reads and 5,000,000 for writes
  (``app_reads_per_minute`` / ``app_writes_per_minute``). Over it -> HTTP 429 + ``Retry-After`` and, as the
  2025-07 changelog shows, ``{"errors": [{"message": "Complexity budget exhausted", "extensions": {"code":
  "COMPLEXITY_BUDGET_EXHAUSTED", "retry_in_seconds": N}}]}`` (the wait is in the body, ANCHORS §7). UNCONFIRMED:
  the HTTP status (the error-handling page lists it among the 429s; the changelog shows only the body).
- ``complexity { before after query reset_in_x_seconds }``: the budget before and after this query, its cost,
  and the seconds until the oldest charge leaves the window.
- Requests per minute per account (``requests_per_minute``, None = off): HTTP 429 + ``Retry-After``, ``{"errors":
  [{"message": "Rate limit exceeded", "extensions": {"code": "RATE_LIMIT_EXCEEDED", "retry_in_seconds"}}]}``
  (UNCONFIRMED: the code's spelling; the support article names the error "Rate Limit Exceeded").
- Daily calls per account (``daily_calls``, None = off; resets at midnight UTC of the sandbox clock): HTTP 429,
  code ``DAILY_LIMIT_EXCEEDED`` (support article), ``retry_in_seconds`` until midnight (UNCONFIRMED status).
- ``FIELD_LIMIT_EXCEEDED`` (429; ``error_data: {"retry_in_seconds", "entity"}``, changelog): sent for the next
  ``faults.field_limit_next`` requests (a switch; monday sends it when too many requests run one field at once).
  ``retry_in_seconds`` is also given at ``extensions`` level (UNCONFIRMED which one 2026-10 uses).
- A board locked by a concurrent update (``lock_board``) -> HTTP 423 "Resource is currently locked, please try
  again later" + ``Retry-After`` for mutations on it (errors page); code ``RESOURCE_LOCKED`` UNCONFIRMED. Reads
  go on. In a document with several (aliased) mutations, those before the refused one stay applied.
- ASSUMPTION (not documented, API-FACTS §6.5): ``board_mutations_per_minute`` (None = off) caps mutations per
  board per sliding minute -> HTTP 429 + ``Retry-After``, code ``BOARD_MUTATION_LIMIT_EXCEEDED`` (invented).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class Limits:
    max_query_complexity: int = 5_000_000
    complexity_per_minute: int = 10_000_000          # personal tokens, reads + writes
    app_reads_per_minute: int = 5_000_000
    app_writes_per_minute: int = 5_000_000
    requests_per_minute: int | None = None
    daily_calls: int | None = None
    board_mutations_per_minute: int | None = None   # ASSUMPTION: not documented by monday


class Window:
    """Charges in a sliding window of ``span`` seconds."""

    __slots__ = ("events", "span", "total")

    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        ev = self.events
        while ev and ev[0][0] <= now - self.span:
            self.total -= ev.popleft()[1]
        return self.total

    def add(self, now: float, amount: int = 1) -> None:
        self.events.append((now, amount))
        self.total += amount

    def reset_in(self, now: float) -> int:
        """Seconds until the oldest charge leaves the window (0 when empty)."""
        self.used(now)
        if not self.events:
            return 0
        return max(1, math.ceil(self.events[0][0] + self.span - now))

    def wait_for(self, now: float, room_needed: int, cap: int) -> int:
        """Seconds until ``room_needed`` fits under ``cap`` (as charges expire)."""
        total = self.used(now)
        for t, amount in self.events:
            if total + room_needed <= cap:
                break
            total -= amount
            wait = t + self.span - now
            if total + room_needed <= cap:
                return max(1, math.ceil(wait))
        return max(1, math.ceil(self.events[0][0] + self.span - now)) if self.events else 1
